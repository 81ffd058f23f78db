"""Resumable training checkpoints: the whole state of an unfinished run, written atomically.

A run keeps its checkpoints in one folder, one directory per checkpoint named
after the optimizer step it was taken at (``step-0000120``), containing:
  model.safetensors       the current weights
  best_model.safetensors  the weights of the best epoch so far (once an epoch has ended)
  optimizer.pt            the optimizer state (AdamW moments)
  scheduler.pt            the learning-rate schedule's position
  grad_scaler.pt          the float16 loss scale (--fp16 runs only)
  rng_state.pt            every process's Python, NumPy and torch RNG states, and the data-order generator
  trainer_state.json      the loop position, per-epoch history, the settings of the run, seed, library
                          versions and the SHA-256 of every other file; written last

Each directory is assembled under a temporary name and renamed into place, so
a crash or a full disk leaves earlier checkpoints whole and no partial one.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from hashee_cli import atomic
from hashee_cli.errors import CheckpointError, HasheeError
from hashee_cli.provenance import library_versions

FORMAT_VERSION = 1
STATE_FILE = "trainer_state.json"
MODEL_FILE = "model.safetensors"
BEST_MODEL_FILE = "best_model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
GRAD_SCALER_FILE = "grad_scaler.pt"
RNG_FILE = "rng_state.pt"

_CHECKPOINT_NAME = re.compile(r"step-(\d+)")
# Leftovers of atomic_directory after a kill: ".step-0000120.<random>.tmp" and ".step-0000120.old-<pid>".
_TEMPORARY_NAME = re.compile(r"\.step-\d+\.(.+\.tmp|old-\d+)")


def checkpoint_name(step: int) -> str:
    return f"step-{step:07d}"


@dataclass
class LoopState:
    """Position of the training loop: what it needs besides tensors to continue exactly."""

    epoch: int = 1  # the epoch in progress; epochs + 1 once every epoch has ended
    batches_done: int = 0  # batches of ``epoch`` already trained on
    step: int = 0  # optimizer steps taken
    loss_sum: float = 0.0  # sum of the step losses of ``epoch`` so far
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float | None = None


def capture_rng_state(device: torch.device) -> dict:
    """Return this process's RNG states (Python, NumPy, torch and, on a GPU, CUDA) as plain values and tensors."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict, device: torch.device) -> None:
    """Set the RNG states captured by ``capture_rng_state``."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """Return the SHA-256 of a file's bytes as hex."""
    return _sha256(Path(path))


@dataclass
class TrainingCheckpoint:
    """A verified checkpoint: loop state, settings of the run, and the states to restore."""

    path: Path
    loop: LoopState
    run_settings: dict
    best_state: dict[str, torch.Tensor] | None
    optimizer_state: dict
    scheduler_state: dict
    grad_scaler_state: dict | None
    rng_states: list[dict]  # one per process, in rank order
    data_order_state: torch.Tensor  # the data-order generator before the current epoch's batches were drawn

    @property
    def step(self) -> int:
        return self.loop.step

    def load_model_weights(self, model: torch.nn.Module) -> None:
        """Load the checkpoint's current weights into ``model``."""
        path = self.path / MODEL_FILE
        try:
            missing, unexpected = load_model(model, path, strict=False)
        except (SafetensorError, OSError, RuntimeError) as error:
            raise CheckpointError(f"cannot load {path}: {error}") from error
        if missing or unexpected:
            names = ", ".join((missing + unexpected)[:3])
            raise CheckpointError(
                f"{path} does not match the model ({names} ...); resume with the model and options of the original run"
            )


class CheckpointManager:
    """Save, list, rotate and load the resumable checkpoints of one run.

    Only the main process writes or deletes (``is_main``); every process may
    load, so the folder must be on storage that all processes see.
    """

    def __init__(self, directory: str | Path, save_steps: int = 0, save_total_limit: int = 2, is_main: bool = True):
        if save_steps < 0:
            raise HasheeError(f"--save-steps must be 0 (only at epoch ends) or positive (got {save_steps})")
        if save_total_limit < 1:
            raise HasheeError(f"--save-total-limit must be at least 1 (got {save_total_limit})")
        self.directory = Path(directory)
        self.save_steps = save_steps
        self.save_total_limit = save_total_limit
        self.is_main = is_main

    def path_for(self, step: int) -> Path:
        return self.directory / checkpoint_name(step)

    def checkpoints(self) -> list[Path]:
        """Return the checkpoint directories, oldest (lowest step) first."""
        if not self.directory.is_dir():
            return []
        found = []
        for entry in self.directory.iterdir():
            match = _CHECKPOINT_NAME.fullmatch(entry.name)
            if match and entry.is_dir():
                found.append((int(match.group(1)), entry))
        return [entry for _, entry in sorted(found)]

    def latest(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def remove_temporaries(self) -> None:
        """Delete half-written checkpoint directories that a killed process left behind."""
        if not self.is_main or not self.directory.is_dir():
            return
        for entry in self.directory.iterdir():
            if _TEMPORARY_NAME.fullmatch(entry.name):
                shutil.rmtree(entry, ignore_errors=True)

    def clear(self) -> None:
        """Delete every checkpoint of this run, and the folder once it is empty."""
        if not self.is_main:
            return
        self.remove_temporaries()
        for entry in self.checkpoints():
            shutil.rmtree(entry)
        if self.directory.is_dir() and not any(self.directory.iterdir()):
            self.directory.rmdir()

    def save(
        self,
        loop: LoopState,
        run_settings: dict,
        model: torch.nn.Module,
        best_state: dict[str, torch.Tensor] | None,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        grad_scaler: torch.amp.GradScaler | None,
        rng_states: list[dict],
        data_order_state: torch.Tensor,
    ) -> Path:
        """Write a checkpoint of ``loop.step`` atomically, then delete the oldest beyond ``save_total_limit``."""
        path = self.path_for(loop.step)
        previous = self.latest()
        try:
            with atomic.atomic_directory(path, overwrite=True) as staging:
                save_model(model, str(staging / MODEL_FILE))
                if best_state is not None:
                    save_file(best_state, staging / BEST_MODEL_FILE)
                torch.save(optimizer.state_dict(), staging / OPTIMIZER_FILE)
                torch.save(scheduler.state_dict(), staging / SCHEDULER_FILE)
                if grad_scaler is not None:
                    torch.save(grad_scaler.state_dict(), staging / GRAD_SCALER_FILE)
                torch.save({"processes": rng_states, "data_order": data_order_state}, staging / RNG_FILE)
                files = {entry.name: _sha256(entry) for entry in sorted(staging.iterdir())}
                state = {
                    "format_version": FORMAT_VERSION,
                    "loop": asdict(loop),
                    "run_settings": run_settings,
                    "seed": run_settings.get("training.seed"),
                    "versions": library_versions(),
                    "files": files,
                }
                atomic.write_text(staging / STATE_FILE, json.dumps(state, indent=2) + "\n")
        except OSError as error:
            kept = f"{previous} is the last complete checkpoint" if previous else "no earlier checkpoint exists"
            raise CheckpointError(
                f"cannot write checkpoint {path}: {error.strerror or error}. Nothing was lost: {kept}. "
                "Free space or fix the folder, then run the same command with --resume"
            ) from error

        for old in self.checkpoints()[: -self.save_total_limit]:
            shutil.rmtree(old, ignore_errors=True)
        return path

    def _corrupted(self, path: Path, problem: str) -> CheckpointError:
        found = self.checkpoints()
        earlier = found[: found.index(path.parent)] if path.parent in found else []
        if earlier:
            remedy = f"delete {path.parent} to resume from {earlier[-1].name}, or pass --overwrite without --resume to start over"
        else:
            remedy = "pass --overwrite without --resume to start over"
        return CheckpointError(f"checkpoint file {path} {problem}; {remedy}")

    def load(self, path: Path) -> TrainingCheckpoint:
        """Verify every file of the checkpoint at ``path`` against its SHA-256 and load the states."""
        state_path = path / STATE_FILE
        try:
            state = json.loads(state_path.read_text(encoding="utf-8"))
            files = dict(state["files"])
            loop = LoopState(**state["loop"])
            run_settings = dict(state["run_settings"])
            format_version = state["format_version"]
        except FileNotFoundError:
            raise self._corrupted(state_path, "is missing") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise self._corrupted(state_path, f"is unreadable ({error})") from error
        if format_version != FORMAT_VERSION:
            raise CheckpointError(
                f"{state_path} has checkpoint format {format_version}, this hashee reads {FORMAT_VERSION}; "
                "resume with the hashee version that wrote it, or start over with --overwrite"
            )

        for name, expected in files.items():
            file_path = path / name
            if not file_path.is_file():
                raise self._corrupted(file_path, "is missing")
            if _sha256(file_path) != expected:
                raise self._corrupted(file_path, f"is corrupted (its SHA-256 differs from the one in {STATE_FILE})")

        def read(name: str):
            try:
                return torch.load(path / name, map_location="cpu", weights_only=True)
            except (OSError, RuntimeError, EOFError, ValueError) as error:
                raise self._corrupted(path / name, f"is unreadable ({error})") from error

        best_state = None
        if BEST_MODEL_FILE in files:
            try:
                best_state = load_file(path / BEST_MODEL_FILE)
            except (SafetensorError, OSError) as error:
                raise self._corrupted(path / BEST_MODEL_FILE, f"is unreadable ({error})") from error
        if MODEL_FILE not in files:
            raise self._corrupted(path / MODEL_FILE, "is missing")
        rng = read(RNG_FILE)
        return TrainingCheckpoint(
            path=path,
            loop=loop,
            run_settings=run_settings,
            best_state=best_state,
            optimizer_state=read(OPTIMIZER_FILE),
            scheduler_state=read(SCHEDULER_FILE),
            grad_scaler_state=read(GRAD_SCALER_FILE) if GRAD_SCALER_FILE in files else None,
            rng_states=rng["processes"],
            data_order_state=rng["data_order"],
        )


def differing_settings(saved: dict, current: dict) -> list[tuple[str, object, object]]:
    """Return (key, saved value, current value) for every setting that differs between two runs."""
    keys = sorted(set(saved) | set(current))
    return [(key, saved.get(key), current.get(key)) for key in keys if saved.get(key) != current.get(key)]
