"""Devices and processes: the device a run asks for, and torch.distributed set up from the job's
environment: one process per GPU (or per CPU task with gloo), world described by submitit's
JobEnvironment under Slurm (one Slurm task per GPU, never torchrun inside submitit), or by the
usual RANK / WORLD_SIZE / MASTER_ADDR variables. With neither, everything runs single-process
and these helpers are no-ops. The stages use them; jobs/ only starts the processes.
"""
from __future__ import annotations

import os
import signal
import threading
import zlib

import torch
import torch.distributed as dist


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA where available), ``cpu``, ``cuda`` (this rank's GPU) or ``cuda:N``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} but CUDA is not available here; use device=cpu or device=auto")
    if name == "cuda" and is_distributed():   # one GPU per task
        return torch.device("cuda", local_rank())
    return torch.device(name)


def setup() -> bool:
    """Join the process group if this process is one of several tasks; True if distributed."""
    if dist.is_available() and dist.is_initialized():
        return True
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        _env_from_submitit()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend, init_method="env://")
    return True


def take_sigint() -> None:
    """Ctrl-C back for a job process started with SIGINT ignored: the local sweep starts
    submitit's controller that way (jobs/executors.py), and its tasks inherit the setting."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _env_from_submitit() -> None:
    """RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT from a submitit job with several tasks."""
    import submitit
    try:
        env = submitit.JobEnvironment()
    except RuntimeError:    # not inside a submitit job
        return
    if env.num_tasks <= 1:
        return
    os.environ.update(RANK=str(env.global_rank), WORLD_SIZE=str(env.num_tasks), LOCAL_RANK=str(env.local_rank),
                      MASTER_ADDR=env.hostnames[0])
    # The port is a function of the job id: tasks of one job agree, array tasks sharing a node don't clash.
    os.environ.setdefault("MASTER_PORT", str(20000 + zlib.crc32(str(env.job_id).encode()) % 20000))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def main_first(fn):
    """``fn()`` on rank 0 first (e.g. to train and cache something), then on the others (which
    then load the cache)."""
    if not is_main():
        barrier()
    out = fn()
    if is_main():
        barrier()
    return out


def shard(items, total: int | None = None):
    """This rank's contiguous part of ``items`` (a global batch or the image indices). A batch
    must split evenly, so that the mean of the ranks' losses is the global batch's loss."""
    n = total if total is not None else len(items)
    world, r = world_size(), rank()
    if world == 1:
        return items
    if total is None and n % world:
        raise ValueError(f"a batch of {n} does not split over {world} processes; use a batch size divisible by {world}")
    per = -(-n // world)
    return items[r * per:min((r + 1) * per, n)]


def all_mean(values: list[float]) -> list[float]:
    """Each value's mean over the ranks, in one collective (the global-batch loss; the share of
    ranks that hold a signal)."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=collective_device())
    dist.all_reduce(t)
    return (t / world_size()).tolist()


def gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated along dim 0 in rank order (on CPU, on every rank)."""
    if not is_distributed():
        return tensor
    parts = [None] * world_size()
    dist.all_gather_object(parts, tensor.cpu())
    return torch.cat(parts)


def collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
