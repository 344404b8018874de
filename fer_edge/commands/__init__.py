"""The training and compression commands of ``fer-edge``, and ``robustness``: each module is
its command's options (``add_arguments``) and one call into the library function of the same
step (``run``), which takes typed keyword arguments named after the options. Nothing but
:mod:`fer_edge.cli` imports these modules."""
