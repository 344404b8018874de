"""fer-edge: facial expression recognition for edge devices.

The on-device SDK imports numpy, OpenCV and one inference runtime, never torch.
"""

from .bundle import Bundle, load_bundle
from .errors import BundleError, DatasetError, FerEdgeError, InputError, RuntimeBackendError
from .labels import FER_LABELS
from .preprocess import PreprocessSpec, preprocess

__all__ = [
    "FER_LABELS",
    "Bundle",
    "FaceResult",
    "Recognizer",
    "BundleError",
    "DatasetError",
    "FerEdgeError",
    "InputError",
    "PreprocessSpec",
    "RuntimeBackendError",
    "load_bundle",
    "preprocess",
]
__version__ = "0.1.0"

# Loaded on first use, so that `import fer_edge` stays fast and pulls in no runtime.
_LAZY = {"Recognizer": "recognizer", "FaceResult": "recognizer"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
