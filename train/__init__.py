"""Server-side training (needs the ``[train]`` extra: torch, torchvision)."""
