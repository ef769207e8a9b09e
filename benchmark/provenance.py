"""Where a record's numbers come from: the code (git commit, and whether the tree had local
changes), the packages, the machine (never its host name) and the command that ran."""
from __future__ import annotations

import functools
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMAND_ENV = "SCALEWISE_COMMAND"   # set by the CLI, inherited by its local and Slurm jobs


@functools.lru_cache(maxsize=1)
def git_state() -> dict:
    """{"commit", "dirty"} of the suite's checkout (None where it is not a git checkout);
    dirty: tracked files differ from the commit, so the commit alone does not reproduce it."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def packages() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "diffusers", "torch-fidelity", "mmengine", "mmengine-lite", "numpy",
                 "omegaconf", "submitit"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def machine() -> dict:
    """CPU model, cores, memory, OS and GPU: enough to compare timings, no host name."""
    import torch
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        memory_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1)
    except (ValueError, OSError, AttributeError):
        memory_gb = None
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {"cpu": cpu or None, "cores": os.cpu_count(), "memory_gb": memory_gb, "os": platform.platform(terse=True),
            "gpus": gpus, "torch_threads": torch.get_num_threads()}


def command() -> str:
    """The command the user typed (the CLI's, handed to its jobs), else this process's."""
    return os.environ.get(COMMAND_ENV) or " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])


def provenance() -> dict:
    return {**git_state(), "packages": packages(), "machine": machine(), "command": command()}
