"""Server-side training (needs the ``[train]`` extra: torch, torchvision).

``fer_edge.train.fit(data=..., arch=..., epochs=...)`` trains a classifier
(:func:`fer_edge.train.supervised.fit`); the other steps are the functions of their modules:
``fer_edge.train.pretrain.fit``, ``fer_edge.train.probe.probe``,
``fer_edge.train.pipeline.run_pipeline``.
"""


def __getattr__(name: str):
    # Loaded on first use: importing any training module (checkpoint, nets) should not load the
    # supervised trainer and, through it, every method.
    if name == "fit":
        from .supervised import fit

        return fit
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
