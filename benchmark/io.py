"""Writing files so that a crash or a concurrent job never leaves a half-written one under its
final name: every write goes to a temporary file in the same folder, then ``os.replace``."""
from __future__ import annotations

import fcntl
import json
import os
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
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


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
