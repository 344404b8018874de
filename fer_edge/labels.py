"""Emotion label names and the aliases that datasets use for them."""

from __future__ import annotations

# Alphabetical, which is also the order of the FER-2013 class folders.
FER_LABELS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")

# Kaggle fer2013.csv encodes the emotion as an index in this order.
FER2013_CSV_ORDER: tuple[str, ...] = (
    "angry",
    "disgust",
    "fear",
    "happy",
    "sad",
    "surprise",
    "neutral",
)

ALIASES: dict[str, str] = {
    "anger": "angry",
    "angry": "angry",
    "disgust": "disgust",
    "disgusted": "disgust",
    "fear": "fear",
    "fearful": "fear",
    "afraid": "fear",
    "happy": "happy",
    "happiness": "happy",
    "joy": "happy",
    "neutral": "neutral",
    "sad": "sad",
    "sadness": "sad",
    "surprise": "surprise",
    "surprised": "surprise",
    "contempt": "contempt",
}


def canonical(name: str) -> str:
    """Map a dataset's class name (any case, with aliases) to the canonical label name."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    key = key.split("_", 1)[-1] if key[:1].isdigit() and "_" in key else key  # "3_happy"
    return ALIASES.get(key, key)
