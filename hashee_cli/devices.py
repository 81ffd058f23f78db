"""Device selection for training and inference."""

from __future__ import annotations

import torch

from hashee_cli.errors import HasheeError


def resolve_device(name: str) -> torch.device:
    """Return the torch device for ``--device`` (auto picks CUDA when available)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise HasheeError(f"unknown --device {name!r}; use auto, cpu, cuda or cuda:N") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HasheeError(f"--device {name} requested but CUDA is not available; use --device cpu")
    return device
