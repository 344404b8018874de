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
