"""Data-parallel training with torch.distributed: which rank this is, and the few collectives the train stage uses.

A run is distributed when torchrun started it (WORLD_SIZE > 1 in the environment). The process group is gloo
on the CPU and NCCL on CUDA (one GPU per local rank). Every collective has a timeout (`collective_timeout_s`),
and a collective that fails because a peer went away raises `PeerFailed`, which the entry point turns into a
quiet exit: the rank that failed first carries the one message.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 300.0
LOCK_ENV = "AV2T_OUT_LOCKED"  # set by a launcher that holds the output lock for its ranks


class PeerFailed(RuntimeError):
    """Another rank failed (its message is the run's message); this rank leaves without one of its own."""


class RendezvousError(RuntimeError):
    """The process group could not form (a busy port, no rendezvous): one line naming the option."""


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: rank, world size, local rank (its GPU on a node)."""

    rank: int = 0
    world: int = 1
    local: int = 0

    @property
    def active(self) -> bool:
        """More than one rank: collectives are needed."""
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes files and logs."""
        return self.rank == 0


def env_ranks() -> Ranks:
    """The ranks torchrun set in the environment (one rank when it did not)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Ranks()
    return Ranks(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def writes_outputs() -> bool:
    """Whether this process takes the output lock and writes: rank 0, unless the launcher holds the lock
    (then rank 0 writes under the launcher's lock)."""
    return env_ranks().main and os.environ.get(LOCK_ENV) != "1"


def setup(device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[Ranks, torch.device]:
    """Join the process group (gloo on the CPU, NCCL on CUDA); the ranks and this rank's device."""
    ranks = env_ranks()
    if not ranks.active:
        return ranks, device
    if device.type == "cuda":
        device = torch.device("cuda", ranks.local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
        if missing:
            raise RendezvousError(
                f"WORLD_SIZE={ranks.world} but {' and '.join(missing)} not set: start the ranks with torchrun "
                "(--nproc-per-node, --rdzv-endpoint) or `av2t train --nproc N`"
            )
        try:
            dist.init_process_group(
                "nccl" if device.type == "cuda" else "gloo",
                timeout=timedelta(seconds=timeout_s),
                device_id=device if device.type == "cuda" else None,
            )
        except (RuntimeError, ValueError) as e:
            where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
            raise RendezvousError(
                f"rank {ranks.rank}: cannot join the process group at {where} (--master-port / --rdzv-endpoint): "
                f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__}"
            ) from e
    return ranks, device


def _collective(what: str, fn: Any, *args: Any) -> Any:
    """Run a collective; a failure (a peer gone, a timeout) becomes PeerFailed."""
    try:
        return fn(*args)
    except (RuntimeError, dist.DistBackendError) as e:
        raise PeerFailed(f"{what}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else e}") from e


def reduce_gradients(params: list[torch.nn.Parameter], weighted_loss: torch.Tensor) -> torch.Tensor:
    """Sum every rank's gradients (each rank's loss already weighted by its share of the global batch) in one
    all-reduce, with the weighted losses (-> the global batch's loss) and which parameters got a gradient on
    any rank (the others keep grad None, as in one process). Returns the global loss (0-dim)."""
    dev = weighted_loss.device
    has = [p.grad is not None for p in params]
    flat = torch.cat(
        [
            *(
                p.grad.reshape(-1) if h else torch.zeros(p.numel(), device=dev)
                for p, h in zip(params, has, strict=True)
            ),
            torch.tensor([float(h) for h in has], device=dev),
            weighted_loss.reshape(1).float(),
        ]
    )
    _collective("all-reduce of the gradients", dist.all_reduce, flat)
    at = 0
    for p in params:
        n = p.numel()
        p.grad = flat[at : at + n].view_as(p).to(p.dtype).clone()
        at += n
    flags = flat[at : at + len(params)]
    for p, f in zip(params, flags.tolist(), strict=True):
        if f == 0:
            p.grad = None
    return flat[-1].detach()


def gather(obj: Any) -> list[Any]:
    """Every rank's object, in rank order, on every rank."""
    out: list[Any] = [None] * dist.get_world_size()
    _collective("gathering the ranks' results", dist.all_gather_object, out, obj)
    return out


def agree(ranks: Ranks, error: Exception | None) -> None:
    """Agree on failures at a point every rank reaches: if any rank has an error, the lowest such rank raises
    its own, named ('rank k: ...'), the others raise PeerFailed. One process: the error, as it is."""
    if not ranks.active:
        if error is not None:
            raise error
        return
    messages = gather(None if error is None else str(error))
    bad = [r for r, m in enumerate(messages) if m is not None]
    if not bad:
        return
    if bad[0] == ranks.rank and error is not None:
        error.args = (f"rank {ranks.rank}: {error}",)
        raise error
    raise PeerFailed(f"rank {bad[0]} failed")


def close() -> None:
    """Leave the process group (when one was joined)."""
    if dist.is_initialized():
        dist.destroy_process_group()
