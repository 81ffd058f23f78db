"""Multi-process training through torch.distributed, one process per device.

``torchrun`` starts the processes and sets RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT in each of them. Without those
variables hashee runs as one process, and every collective below returns its
input unchanged.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from hashee_cli.devices import resolve_device
from hashee_cli.errors import HasheeError

# A rank that waits longer than this for the others (one crashed or hangs) raises instead of hanging.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


def _environment_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise HasheeError(f"environment variable {name}={value!r} is not a whole number; launch with torchrun") from None


def environment_rank() -> int:
    """Return this process's rank from the launcher's environment (0 without a launcher)."""
    return _environment_int("RANK", 0)


@dataclass
class DistributedContext:
    """This process's place among the training processes, and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Return the element-wise sum of ``values`` over all processes."""
        if not self.enabled:
            return list(values)
        # float64 keeps sums of per-process losses exact enough to compare runs.
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()

    def all_agree(self, ok: bool) -> bool:
        """Return True only if ``ok`` is True on every process."""
        if not self.enabled:
            return ok
        flag = torch.tensor([1 if ok else 0], dtype=torch.int64, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def any_true(self, flag: bool) -> bool:
        """Return True if ``flag`` is True on any process."""
        return not self.all_agree(not flag)

    def all_gather(self, value: object) -> list:
        """Return every process's ``value`` (picklable), in rank order."""
        if not self.enabled:
            return [value]
        gathered: list = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def _process_device(name: str, local_rank: int, world_size: int) -> torch.device:
    """Resolve ``--device`` for this process: under torchrun each process takes the GPU of its local rank."""
    device = resolve_device(name)
    if device.type != "cuda" or world_size == 1:
        return device
    if name not in ("auto", "cuda"):
        raise HasheeError(
            f"--device {name} pins every process to one GPU; under torchrun pass --device cuda (or auto), "
            "and each process takes the GPU of its LOCAL_RANK"
        )
    if local_rank >= torch.cuda.device_count():
        raise HasheeError(
            f"LOCAL_RANK {local_rank} has no GPU: this node has {torch.cuda.device_count()}; "
            "lower torchrun's --nproc_per_node"
        )
    return torch.device("cuda", local_rank)


@contextlib.contextmanager
def distributed_session(device_name: str) -> Iterator[DistributedContext]:
    """Join the process group that torchrun set up (if any) and yield this process's context.

    The group uses NCCL on GPUs and gloo on CPUs. It is destroyed on exit
    when this call created it.
    """
    world_size = _environment_int("WORLD_SIZE", 1)
    rank = environment_rank()
    local_rank = _environment_int("LOCAL_RANK", 0)
    local_world_size = _environment_int("LOCAL_WORLD_SIZE", world_size)
    if world_size < 1 or not 0 <= rank < world_size:
        raise HasheeError(f"invalid RANK={rank} for WORLD_SIZE={world_size}; launch with torchrun")

    device = _process_device(device_name, local_rank, world_size)
    context = DistributedContext(rank, world_size, local_rank, local_world_size, device)
    if world_size == 1:
        yield context
        return

    if not dist.is_available():
        raise HasheeError("this torch build has no torch.distributed; run one process or install a build with it")
    created = not dist.is_initialized()
    if created:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        # NOTE: the tests run gloo on CPU only; the NCCL path makes the same calls but has not been run here.
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT)
    elif dist.get_world_size() != world_size:
        raise HasheeError(
            f"the process group has {dist.get_world_size()} processes but WORLD_SIZE is {world_size}"
        )
    try:
        yield context
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()
