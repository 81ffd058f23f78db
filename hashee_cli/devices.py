"""Device selection for training and inference."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

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


PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Precision:
    """The arithmetic that training runs in.

    ``dtype`` is the autocast type (None for float32). ``note`` explains why a
    requested mixed precision was not applied on this device.
    """

    name: str = "fp32"
    dtype: torch.dtype | None = None
    note: str | None = None

    @property
    def uses_grad_scaler(self) -> bool:
        # float16 gradients underflow without loss scaling; bfloat16 has float32's exponent range.
        return self.dtype == torch.float16

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """Return the autocast context for a forward pass on ``device`` (a no-op in float32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype)


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """Return the precision to train in: ``requested`` where ``device`` supports it, else float32 with a note.

    CUDA supports fp16 (with loss scaling) and bf16 where the GPU has it; the
    CPU supports bf16 through CPU autocast. Other devices train in float32.
    """
    if requested not in PRECISIONS:
        raise HasheeError(f"unknown precision {requested!r}; use one of {', '.join(PRECISIONS)}")
    if requested == "fp32":
        return Precision()

    flag = f"--{requested}"
    fallback = "; training in float32 instead"
    if device.type == "cuda":
        if requested == "bf16" and not torch.cuda.is_bf16_supported():
            return Precision(note=f"{flag}: this GPU has no bfloat16 support, use --fp16{fallback}")
        return Precision(requested, torch.bfloat16 if requested == "bf16" else torch.float16)
    if device.type == "cpu":
        if requested == "fp16":
            return Precision(note=f"{flag} needs a CUDA device; on CPU only --bf16 is supported{fallback}")
        return Precision("bf16", torch.bfloat16)
    return Precision(
        note=f"{flag} is supported on CUDA (--fp16, --bf16) and CPU (--bf16), not on {device.type}{fallback}"
    )
