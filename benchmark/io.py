"""Writing files so that a crash or a concurrent job never leaves a half-written one under its
final name: every write goes to a temporary file in the same folder, then ``os.replace``."""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results and caches are shared files
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in NO_SPACE:
            raise DiskFullError(path, err) from err
        if isinstance(err, RuntimeError) and ("inline_container" in str(err) or "StreamWriter" in str(err)):
            # torch.save's C++ writer reports a failed write as "unexpected pos ...": find out why
            cause = write_probe_error(path.parent)
            if cause is not None:
                raise DiskFullError(path, cause) from err
        raise
    return path


NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def write_probe_error(folder: Path, size: int = 2 ** 20) -> OSError | None:
    """The out-of-space error writing ``size`` bytes in ``folder`` gives, if it does (the probe
    file is removed)."""
    fd, probe = tempfile.mkstemp(dir=folder, prefix=".space-probe.")
    try:
        left = size
        while left:
            left -= os.write(fd, b"\0" * min(left, 2 ** 16))
        os.fsync(fd)
        return None
    except OSError as err:
        return err if err.errno in NO_SPACE else None
    finally:
        os.close(fd)
        os.unlink(probe)


class DiskFullError(OSError):
    """A write that ran out of space (or quota, or the file-size limit): nothing half-written
    is left, and the previous file of that name, if any, is untouched."""

    def __init__(self, path: Path, err: OSError):
        free = shutil.disk_usage(path.parent).free / 2 ** 20
        kept = f"the previous {path.name} is kept" if path.exists() else "nothing was written"
        super().__init__(err.errno, f"could not write {path}: {err.strerror} ({free:.0f} MiB free there); {kept}. "
                                    "Free some space (or point paths.runs / paths.cache / paths.results at another "
                                    "disk) and run the same command again: it resumes")


@contextmanager
def locked(folder: str | Path):
    """Hold an exclusive lock on ``folder`` (its ``.lock`` file) for a read-then-write that two
    processes must not interleave, e.g. two sweeps rebuilding one results folder's tables."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """The temporary files an ``atomic_write`` of ``path`` left when its process was killed
    mid-write (SIGKILL, power loss): ``path`` itself is the previous, whole file. Removed; the
    names returned."""
    path = Path(path)
    stale = sorted(path.parent.glob(f".{path.name}.*.tmp")) if path.parent.is_dir() else []
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def write_text(path: str | Path, text: str) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    return atomic_write(path, write)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def write_json(path: str | Path, obj: Any) -> Path:
    """Pretty, key-sorted JSON (records, run summaries)."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def save_tensors(tensors: dict, path: str | Path, metadata: dict | None = None) -> Path:
    """A safetensors file of CPU copies of ``tensors``."""
    from safetensors.torch import save_file
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def save_torch(obj: Any, path: str | Path) -> Path:
    """``torch.save`` of tensors and plain containers (training checkpoints)."""
    import torch   # here: reading and writing JSON must not need torch (`status` starts without it)
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))
