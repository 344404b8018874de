"""Typed errors. Every failure a user can cause surfaces as one of these, with a message that
names the problem, instead of a traceback from deep inside numpy, OpenCV or a runtime."""


class FerEdgeError(Exception):
    """Base class of every error fer-edge raises on purpose."""


class InputError(FerEdgeError, ValueError):
    """A frame, face crop or argument that fer-edge cannot use."""


class DatasetError(FerEdgeError):
    """A dataset path or file that cannot be read as a FER dataset."""


class BundleError(FerEdgeError):
    """A model bundle that is missing, malformed, or fails its integrity check."""


class CheckpointError(FerEdgeError):
    """A training checkpoint that is missing, corrupt or of the wrong kind."""


class RuntimeBackendError(FerEdgeError):
    """An inference backend that is not installed or cannot run the bundle."""
