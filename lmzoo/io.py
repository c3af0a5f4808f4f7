"""Atomic file writes: a crash never leaves a half-written file or checkpoint behind.

Temporary names are unique (``tempfile``) and dot-prefixed with a ``.tmp`` suffix, so two writers
never share one and a run can tell its own leftovers (see ``lmzoo.train.loop``). ``tempfile``
creates files 0600 and folders 0700; what is published gets the modes ``open`` / ``mkdir`` would
give under the process umask, like any other file.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def cache_dir() -> Path:
    """Where lmzoo caches what it builds or downloads for itself: ``$LMZOO_CACHE``, else
    ``$XDG_CACHE_HOME/lmzoo``, else ``~/.cache/lmzoo``."""
    if os.environ.get("LMZOO_CACHE"):
        return Path(os.environ["LMZOO_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lmzoo"


@functools.cache
def _umask() -> int:
    """The process umask, read once (setting it back at once: ``os.umask`` is the only portable way)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode of a new file under the umask (0644 under the usual 022)."""
    return 0o666 & ~_umask()


def folder_mode() -> int:
    """The mode of a new folder under the umask (0755 under the usual 022)."""
    return 0o777 & ~_umask()


def temp_folder(parent: str | os.PathLike, name: str) -> Path:
    """A new, uniquely named ``.NAME.*.tmp`` folder in ``parent``, with the umask's folder mode."""
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}.", suffix=".tmp"))
    os.chmod(tmp, folder_mode())
    return tmp


def remove_folder(path: str | os.PathLike) -> None:
    """Delete a folder so that it never stays half deleted under its name: renamed away to a unique
    temporary name first (one atomic step), then removed."""
    path = Path(path)
    away = temp_folder(path.parent, f"{path.name}.deleted")
    os.replace(path, away)  # a folder may replace an empty folder
    shutil.rmtree(away, ignore_errors=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), file_mode())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as indented JSON; a non-finite float (a perplexity that overflowed) is written as null,
    since NaN and Infinity are not JSON and strict readers refuse the file."""
    atomic_write_text(path, json.dumps(_finite(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``path`` in one rename.

    If the block raises, the temporary folder is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_folder(path.parent, path.name)
    try:
        yield tmp
        if path.exists():
            old = temp_folder(path.parent, f"{path.name}.old")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
