"""Many processes (``torchrun``): rank, world size, the process group, sharding and the collectives.

Every process of a ``torchrun --nproc_per_node R -m uap_core …`` job runs the same command. torchrun sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT``); :func:`init_from_env` joins the
process group they describe — NCCL when the run is on CUDA (one GPU per local rank), gloo on the CPU. With no
such variables, or ``WORLD_SIZE=1``, nothing is initialised and every helper here is the identity of the
single-process code (rank 0 of 1, no collective is ever called): one process is exactly today's code path.

What is split, and how (see ``bench/DISTRIBUTED.md``):

- **Fit images** (:func:`shard_counts` → :class:`Shard`): each rank holds one contiguous block of the fit set.
  The seeded generator draws the same global batches on every rank; a rank computes the gradient of the images
  of a batch that it holds, and :func:`all_reduce_sum` adds the ranks' sums (the algorithms call it through
  ``UAPAlgorithm.batch_gradient`` / SGA's step).
- **Evaluation images** (:func:`batch_block`): whole evaluation batches per rank, so every forward sees the same
  images as in one process; :func:`gather_rows` puts the per-image labels back in order on every rank.
- **Writing**: only rank 0 writes artifacts or prints results (:func:`is_main`), and only after
  :func:`barrier` has seen every rank arrive.

A collective that fails (a rank died, or did not arrive within the timeout, ``UAP_DIST_TIMEOUT`` seconds,
default 600) raises :class:`DistributedError`, a one-line :class:`~uap_core.errors.UAPError`. torchrun's agent
ends the other ranks when one exits with an error; rank 0 then never reaches its write.

The time spent inside collectives is added up per process (:func:`collective_stats`): with gloo that is the
transfer plus the wait for the slowest rank; on CUDA it is measured between device synchronisations only when
:func:`set_timing` is on (``bench/scaling.py`` turns it on), since NCCL calls return before the transfer ends.
"""

from __future__ import annotations

import datetime
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.distributed as dist

from .errors import UAPError, first_line

TIMEOUT_ENV = "UAP_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0


class DistributedError(UAPError):
    """A multi-process run cannot go on: a rank failed, timed out or was stopped by the launcher."""


@dataclass
class _Stats:
    seconds: float = 0.0
    calls: int = 0
    bytes: int = 0
    by_name: dict[str, float] = field(default_factory=dict)


_stats = _Stats()
_timing = {"sync_cuda": False}
_backend: dict[str, str | None] = {"name": None}


# ---------------------------------------------------------------------------------------------- who am I
def env_world_size() -> int:
    """WORLD_SIZE as torchrun set it (1 when absent)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise DistributedError(f"WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} is not a whole number") from None


def launched() -> bool:
    """True in a process that torchrun started as one of several (WORLD_SIZE > 1)."""
    return env_world_size() > 1


def is_active() -> bool:
    """True once this process is in a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank, 0..world_size-1 (0 in a single process)."""
    return dist.get_rank() if is_active() else 0


def world_size() -> int:
    """Number of processes in the job (1 in a single process)."""
    return dist.get_world_size() if is_active() else 1


def local_rank() -> int:
    """LOCAL_RANK (the process's index on its machine: its GPU); 0 when absent."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def local_world_size() -> int:
    """LOCAL_WORLD_SIZE (processes on this machine); 1 when absent."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))


def is_main() -> bool:
    """True on rank 0, the one process that writes artifacts and prints results."""
    return rank() == 0


def backend() -> str | None:
    """"nccl" or "gloo" while distributed, else None."""
    return _backend["name"] if is_active() else None


def timeout_seconds() -> float:
    """Seconds a collective may wait for the other ranks (UAP_DIST_TIMEOUT, default 600)."""
    text = os.environ.get(TIMEOUT_ENV, "")
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise DistributedError(f"{TIMEOUT_ENV}={text!r} must be a positive number of seconds")
    return value


# ---------------------------------------------------------------------------------------------- set-up
def init_from_env(device: torch.device | str) -> bool:
    """Join the process group torchrun describes; True when this process is one of several.

    device: where the work runs ("cuda…" → NCCL, one GPU per LOCAL_RANK, made the current device; "cpu" → gloo).
    Does nothing (False) without torchrun's variables or with WORLD_SIZE=1. Installs a SIGTERM handler that
    turns the launcher's stop into a :class:`DistributedError` (so no half-written file stays behind).
    """
    if not launched():
        return False
    if is_active():
        return True
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing:
        raise DistributedError(f"WORLD_SIZE={env_world_size()} but {', '.join(missing)} is not set: start "
                               "several processes with torchrun (torchrun --nproc_per_node N -m uap_core …)")
    if not dist.is_available():
        raise DistributedError("this PyTorch build has no torch.distributed")
    device = torch.device(device)
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if local_rank() >= count:
            raise DistributedError(f"local rank {local_rank()} has no GPU: this machine has {count}; start at most "
                                   f"{count} processes per node (--nproc_per_node {count})")
        torch.cuda.set_device(local_rank())
        name = "nccl"
    else:
        name = "gloo"
    try:
        dist.init_process_group(name, timeout=datetime.timedelta(seconds=timeout_seconds()))
    except Exception as exc:  # noqa: BLE001 - rendezvous failures come as many types
        raise DistributedError(f"rank {os.environ.get('RANK')} could not join the process group ({name}): "
                               f"{first_line(exc)}") from None
    _backend["name"] = name
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave the default
        pass
    return True


def _on_sigterm(signum, frame) -> None:  # noqa: ARG001
    raise DistributedError(f"rank {rank()} of {world_size()} stopped by the launcher (SIGTERM): another rank "
                           "failed or the job was cancelled; nothing is written")


def shutdown() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
    _backend["name"] = None


def local_device(device: torch.device) -> torch.device:
    """The device this rank uses: cuda:LOCAL_RANK for a distributed CUDA run, else ``device`` unchanged."""
    device = torch.device(device)
    if is_active() and device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank())
    return device


# ---------------------------------------------------------------------------------------------- sharding
@dataclass(frozen=True)
class Shard:
    """This rank's contiguous block ``[start, stop)`` of ``total`` items numbered the same on every rank.

    bounds: (world_size + 1,) block edges: rank r holds items bounds[r]..bounds[r+1]-1.
    """

    rank: int
    bounds: tuple[int, ...]

    @property
    def start(self) -> int:
        return self.bounds[self.rank]

    @property
    def stop(self) -> int:
        return self.bounds[self.rank + 1]

    @property
    def total(self) -> int:
        return self.bounds[-1]

    @property
    def size(self) -> int:
        return self.stop - self.start

    def local_share(self, indices: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """Split a global batch: (this rank's items of ``indices`` as positions in its block, in the batch's
        order; the number of items of the batch every rank holds, a list of world_size ints). One host sync."""
        edges = torch.tensor(self.bounds[1:-1], dtype=indices.dtype, device=indices.device)
        owner = torch.bucketize(indices, edges, right=True)
        sizes = torch.bincount(owner, minlength=len(self.bounds) - 1).tolist()
        return indices[owner == self.rank] - self.start, sizes

    def local_prefix(self, count: int) -> int:
        """How many of the first ``count`` items this rank holds (they are its first ones)."""
        return max(0, min(count, self.stop) - self.start)


def even_bounds(total: int, parts: int) -> tuple[int, ...]:
    """Edges of ``parts`` contiguous blocks of ``total`` items whose sizes differ by at most one."""
    return tuple(total * r // parts for r in range(parts + 1))


def shard_counts(local_count: int) -> Shard:
    """The :class:`Shard` of blocks held in rank order, from every rank's own count (one all_gather): e.g. the
    fit images each rank could decode. A single process holds everything: Shard(0, (0, local_count))."""
    if not is_active():
        return Shard(0, (0, int(local_count)))
    counts = gather_rows(torch.tensor([int(local_count)], dtype=torch.int64), "the shard sizes").tolist()
    edges = [0]
    for c in counts:
        edges.append(edges[-1] + int(c))
    return Shard(rank(), tuple(edges))


def batch_block(total: int, batch: int) -> range:
    """This rank's evaluation items: whole batches of ``batch`` (the ranks share the ⌈total/batch⌉ batches as
    evenly as possible), so each forward pass sees exactly the images it sees in one process."""
    batches = -(-total // max(1, batch))
    edges = even_bounds(batches, world_size())
    r = rank()
    return range(min(total, edges[r] * batch), min(total, edges[r + 1] * batch))


# ---------------------------------------------------------------------------------------------- collectives
def set_timing(on: bool) -> None:
    """Time the collectives between device synchronisations on CUDA (exact, but adds a sync per call)."""
    _timing["sync_cuda"] = bool(on)


def collective_stats() -> dict[str, float]:
    """This process's time in collectives: seconds, calls, bytes sent, and seconds by collective name."""
    return {"seconds": _stats.seconds, "calls": _stats.calls, "bytes": _stats.bytes,
            **{f"seconds[{k}]": v for k, v in sorted(_stats.by_name.items())}}


def reset_stats() -> None:
    """Forget the collective timings so far."""
    _stats.seconds, _stats.calls, _stats.bytes = 0.0, 0, 0
    _stats.by_name.clear()


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if _backend["name"] == "nccl" else torch.device("cpu")


def _collective(what: str, call, buffer: torch.Tensor) -> None:
    """Run one collective on ``buffer``, timed; any failure becomes a one-line DistributedError."""
    sync = _timing["sync_cuda"] and buffer.is_cuda
    if sync:
        torch.cuda.synchronize(buffer.device)
    started = time.perf_counter()
    try:
        call()
        if sync:
            torch.cuda.synchronize(buffer.device)
    except DistributedError:
        raise
    except Exception as exc:  # noqa: BLE001 - gloo/NCCL raise RuntimeError, DistBackendError, …
        raise DistributedError(f"rank {rank()} of {world_size()}: {what} failed — another rank stopped or did not "
                               f"arrive within {timeout_seconds():g} s ({first_line(exc)}); the run is abandoned "
                               "and nothing is written") from None
    seconds = time.perf_counter() - started
    _stats.seconds += seconds
    _stats.calls += 1
    _stats.bytes += buffer.numel() * buffer.element_size()
    _stats.by_name[what] = _stats.by_name.get(what, 0.0) + seconds


def all_reduce_sum(tensors: Sequence[torch.Tensor], what: str = "all_reduce") -> list[torch.Tensor]:
    """Element-wise sums over the ranks of ``tensors`` (any shapes, floating point or integer counts), in one
    packed collective; returned on each tensor's own device and dtype. A single process gets them back as
    they are. Floats travel as float32 (as the gradients are), so an integer count must stay below 2**24 here;
    int64 tensors are reduced exactly in a second buffer."""
    if not is_active():
        return list(tensors)
    device = _comm_device()
    out: list[torch.Tensor | None] = [None] * len(tensors)
    for dtype in (torch.float32, torch.int64):
        chosen = [i for i, t in enumerate(tensors) if (t.dtype == torch.int64) == (dtype == torch.int64)]
        if not chosen:
            continue
        flat = torch.cat([tensors[i].detach().reshape(-1).to(device=device, dtype=dtype) for i in chosen])
        _collective(what, lambda: dist.all_reduce(flat, op=dist.ReduceOp.SUM), flat)
        offset = 0
        for i in chosen:
            t = tensors[i]
            n = t.numel()
            out[i] = flat[offset:offset + n].reshape(t.shape).to(device=t.device, dtype=t.dtype)
            offset += n
    return out  # type: ignore[return-value]


def any_rank(flag: bool, what: str = "the stop flag") -> bool:
    """True on every rank when ``flag`` is True on any rank (a single process: ``flag``)."""
    if not is_active():
        return bool(flag)
    buffer = torch.tensor([1 if flag else 0], dtype=torch.int64, device=_comm_device())
    _collective(what, lambda: dist.all_reduce(buffer, op=dist.ReduceOp.MAX), buffer)
    return bool(buffer.item())


def agree_min(value: int, what: str = "the batch size") -> int:
    """The smallest ``value`` over the ranks (e.g. an evaluation batch size every rank can take)."""
    if not is_active():
        return int(value)
    buffer = torch.tensor([int(value)], dtype=torch.int64, device=_comm_device())
    _collective(what, lambda: dist.all_reduce(buffer, op=dist.ReduceOp.MIN), buffer)
    return int(buffer.item())


def gather_rows(local: torch.Tensor, what: str = "all_gather") -> torch.Tensor:
    """Concatenate every rank's ``local`` (n_r, …) in rank order, on every rank; sizes may differ (padded to
    the largest for the transfer). Returns a CPU tensor of ``local``'s dtype; a single process gets ``local``."""
    if not is_active():
        return local
    if local.dtype == torch.bool:  # not every backend moves bools
        return gather_rows(local.to(torch.uint8), what).bool()
    device = _comm_device()
    size = torch.tensor([local.shape[0]], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world_size())]
    _collective(what + " (sizes)", lambda: dist.all_gather(sizes, size), size)
    counts = [int(s.item()) for s in sizes]
    largest = max(counts)
    padded = torch.zeros((largest, *local.shape[1:]), dtype=local.dtype, device=device)
    padded[:local.shape[0]] = local.to(device)
    parts = [torch.zeros_like(padded) for _ in counts]
    _collective(what, lambda: dist.all_gather(parts, padded), padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts)]).cpu()


def barrier(what: str = "the final check") -> None:
    """Wait until every rank arrives (an all_reduce, so it honours the timeout on every backend)."""
    if is_active():
        buffer = torch.ones(1, dtype=torch.int64, device=_comm_device())
        _collective(what, lambda: dist.all_reduce(buffer), buffer)
        if int(buffer.item()) != world_size():
            raise DistributedError(f"{what}: {int(buffer.item())} of {world_size()} ranks arrived")


def summary(seconds: float | None = None) -> dict[str, float | int | str | None]:
    """Job-wide figures for rank 0's JSON (a collective: every rank calls it): world size, backend, and the
    time in collectives (the largest and the mean over the ranks), with ``seconds`` of work if given."""
    stats = collective_stats()
    values = torch.tensor([stats["seconds"], float(seconds or 0.0)], dtype=torch.float64)
    everyone = gather_rows(values[None], "the timing summary") if is_active() else values[None]
    return {"world_size": world_size(), "backend": backend(), "collective_calls": int(stats["calls"]),
            "collective_seconds_max": float(everyone[:, 0].max()),
            "collective_seconds_mean": float(everyone[:, 0].mean()),
            "seconds_max": float(everyone[:, 1].max()) if seconds is not None else None}
