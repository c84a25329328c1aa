"""Process-group set-up for torchrun (one node or many): NCCL on GPUs, gloo on CPU; one process per device."""
import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, TypeVar

import torch
import torch.distributed as dist

from pipeline.errors import UserError

Value = TypeVar("Value")


@dataclass(frozen=True)
class World:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def describe(self) -> str:
        """Where training runs, in one line: a GPU recipe started where torch sees no GPU says so at once."""
        if self.device.type == "cuda":
            return (f"training on {torch.cuda.get_device_name(self.device)} (cuda:{self.device.index}), "
                    f"{processes(self.world_size)}")
        return (f"training on the CPU: torch {torch.__version__} sees no CUDA GPU "
                f"(torch.cuda.is_available() is False), {processes(self.world_size)}")


def processes(count: int) -> str:
    """'1 process', '8 processes'."""
    return f"{count} process{'es' if count != 1 else ''}"


def init_world(backend: str = "auto", timeout_min: int = 30) -> World:
    """Read torchrun's environment (absent = a single process) and join the process group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if torch.cuda.is_available():
        gpus = torch.cuda.device_count()
        if local_rank >= gpus:
            raise UserError(f"local rank {local_rank} has no GPU: this node shows {gpus}; start at most that many "
                            "processes per node (torchrun --nproc_per_node)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        chosen = backend if backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
        dist.init_process_group(chosen, timeout=datetime.timedelta(minutes=timeout_min),
                                **({"device_id": device} if chosen == "nccl" else {}))
    return World(rank, world_size, local_rank, local_world_size, device)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks in place (a no-op in one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BN running statistics).

    DDP broadcasts buffers at the start of each forward, so after the last training step every rank holds
    statistics updated by its own last batch; without this, ranks would evaluate slightly different models,
    none of them exactly the one rank 0 saves.
    """
    if dist.is_available() and dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def from_main(world: World, compute: Callable[[], Value]) -> Value:
    """What `compute()` returns on rank 0, on every rank; an exception it raises there is raised on every rank.
    Only rank 0 writes the run directory, so only its view of it counts: on nodes that share no disk the other
    ranks' copy of the folder is empty, and ranks that each read their own resumed different epochs."""
    if not world.distributed:
        return compute()
    outcome: List[Any] = [None]
    if world.is_main:
        try:
            outcome[0] = (compute(), None)
        except Exception as error:  # every rank raises it, not only rank 0 while the others wait
            outcome[0] = (None, error)
    dist.broadcast_object_list(outcome, src=0)
    value, error = outcome[0]
    if error is not None:
        raise error
    return value


def gather_to_main(world: World, value: Value) -> Optional[List[Value]]:
    """[rank 0's value, rank 1's, ...] on rank 0, None on the others."""
    if not world.distributed:
        return [value]
    gathered: Optional[List[Any]] = [None] * world.world_size if world.is_main else None
    dist.gather_object(value, gathered, dst=0)
    return gathered


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def close_world() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
