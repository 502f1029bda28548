"""Multi-GPU and multi-node training through torch DDP, launched by ``torchrun`` (gloo on
CPU, NCCL on GPU), not a home-made scheme: ``torchrun --nproc-per-node N -m hepascope.stream
train ...``. Without torchrun's environment everything here is a no-op single process."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(pref: str) -> torch.device:
    """``auto``: CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if pref not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {pref!r}")
    if pref == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA GPU is available to this torch")
    use_cuda = pref == "cuda" or (pref == "auto" and torch.cuda.is_available())
    return torch.device("cuda") if use_cuda else torch.device("cpu")


def init_distributed(device_pref: str = "auto") -> DistContext:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1), else single process."""
    device = pick_device(device_pref)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank, world, local, device)


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, ctx: DistContext) -> nn.Module:
    """DDP-wrapped model (buffers such as BatchNorm statistics broadcast from rank 0)."""
    if not ctx.enabled:
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """True on every rank when ``flag`` is true on any: ranks must leave a loop together
    (one rank stopping alone would leave the others waiting in the next all-reduce)."""
    if not ctx.enabled:
        return flag
    t = torch.tensor([int(flag)], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def sync_buffers(model: nn.Module, ctx: DistContext) -> None:
    """Rank 0's buffers (BatchNorm running statistics) to every rank. DDP broadcasts them
    before each forward, so after the last training step each rank still holds the
    statistics of its own last batch; this makes the replicas identical for validation and
    checkpointing."""
    if ctx.enabled:
        for b in model.buffers():
            dist.broadcast(b, src=0)


def weights_digest(model: nn.Module) -> str:
    """sha256 of every parameter and buffer, in state-dict order: equal on every rank of a
    correct DDP run, and a fingerprint of a checkpoint."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
