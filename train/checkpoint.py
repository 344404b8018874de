"""Checkpoints: written atomically, read back with ``weights_only=True`` (no pickle code runs)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from fer_edge import atomic
from fer_edge.errors import CheckpointError

MODEL_KEYS = ("model", "arch", "num_classes", "in_channels", "labels", "preprocess")


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    # Serialised in memory first: torch.save reports a failed write (a full disk) as a bare
    # RuntimeError from its zip writer, where the file write gives an OSError naming the file.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic.write_bytes(path, buffer.getbuffer())


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", require=MODEL_KEYS
) -> dict:
    """Load a checkpoint dict; raise CheckpointError naming the problem if it cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as e:
        raise CheckpointError(f"checkpoint {path} cannot be read: {e.strerror or e}") from None
    except Exception as e:  # noqa: BLE001 - garbage makes the unpickler raise almost anything
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"checkpoint {path} cannot be loaded safely (truncated, corrupt, or holds objects "
            f"other than tensors and plain data): {first[:200]}"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a dict")
    missing = [k for k in require if k not in state]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} lacks {', '.join(missing)}: not a fer-edge checkpoint"
        )
    return state
