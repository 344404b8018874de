"""Typed errors. Every failure a user can cause surfaces as one of these, with a message that
names the problem, instead of a traceback from deep inside numpy, OpenCV or a runtime."""

import re


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


class BusyError(FerEdgeError):
    """A folder that another process is writing (two training runs with the same --out)."""


class RuntimeBackendError(FerEdgeError):
    """An inference backend that is not installed or cannot run the bundle."""


# OpenVINO prefixes the cause with one "Exception from <file>:<line>:" line per C++ frame.
_FRAME = re.compile(r"^Exception from \S+:\d+:?$")
# OpenVINO's checks: "Check '<condition>' failed at <file>:<line>:" with the message after it.
_CHECK = re.compile(r"^(Check '.*' failed) at \S+?:\d+:?\s*(.*)$")


def backend_reason(exc: BaseException, limit: int = 240) -> str:
    """The one line of an inference backend's exception that says what failed: OpenVINO's
    ``Check '...' failed: No suitable implementations.`` rather than the first of its stacked
    ``Exception from src/...`` frames; ONNX Runtime's and LiteRT's message, which come on one
    line. Cut to ``limit`` characters."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    lines = [line for line in lines if not _FRAME.match(line)]
    if not lines:
        return type(exc).__name__
    reason = lines[0]
    for i, line in enumerate(lines):
        check = _CHECK.match(line)
        if check:
            detail = check.group(2) or (lines[i + 1] if i + 1 < len(lines) else "")
            # OpenVINO runs its sentences together ("implementations.This may indicate ...")
            detail = re.split(r"(?<=\.)(?=[A-Z])", detail)[0].rstrip(".")
            reason = f"{check.group(1)}: {detail}" if detail else check.group(1)
            break
    return reason if len(reason) <= limit else reason[: limit - 3] + "..."
