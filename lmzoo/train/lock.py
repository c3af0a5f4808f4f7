"""One writer per run folder: an OS file lock held by the process that trains there.

The lock is ``fcntl.flock`` on ``OUT/.lmzoo.lock``. The kernel drops it when the process dies, so a
killed run never leaves a stale lock: the file may stay, but the next run locks it again. The file
holds the pid of its holder, for the message a second writer gets.

What must stay true:
- the lock is taken before anything of a run is written (tokenizer, corpus cache, checkpoints);
- it is reentrant within a process (``pretrain`` holds it and calls ``train``, which takes it too);
- a holder unlinks the file while still holding the lock, and a newcomer checks, once it holds the
  lock, that the path still names the file it locked (else it locked a file just unlinked: retry).
- under torchrun only rank 0 locks (every rank of one run shares the folder); the outcome is
  broadcast, so every rank raises the same error.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from lmzoo.errors import UserError
from lmzoo.train.distributed import DistInfo, broadcast_object

LOCK_NAME = ".lmzoo.lock"

# realpath of a run folder -> [file descriptor, depth] for the locks this process holds
_HELD: dict[str, list[int]] = {}


def _holder_pid(path: Path) -> str:
    with contextlib.suppress(OSError, ValueError):
        return f" (pid {int(path.read_text().strip())})"
    return ""


def _acquire(out_dir: Path) -> int:
    """The descriptor of ``out_dir``'s lock file, locked; a UserError when another process holds it."""
    path = out_dir / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"{out_dir} is in use by a running lmzoo process{_holder_pid(path)}") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)  # the previous holder unlinked it between our open and our lock


@contextlib.contextmanager
def locked(out_dir: str | os.PathLike) -> Iterator[None]:
    """Hold the lock of ``out_dir`` (an existing folder) for the block; reentrant in one process."""
    key = os.path.realpath(out_dir)
    if key in _HELD:
        _HELD[key][1] += 1
    else:
        _HELD[key] = [_acquire(Path(out_dir)), 1]
    try:
        yield
    finally:
        held = _HELD[key]
        held[1] -= 1
        if held[1] == 0:
            del _HELD[key]
            with contextlib.suppress(FileNotFoundError):
                os.unlink(Path(out_dir) / LOCK_NAME)  # while still locked, see the module docstring
            os.close(held[0])


def holds_lock(out_dir: str | os.PathLike) -> bool:
    """Whether this process holds the lock of ``out_dir``."""
    return os.path.realpath(out_dir) in _HELD


@contextlib.contextmanager
def run_folder(out_dir: Path, info: DistInfo) -> Iterator[None]:
    """Create ``out_dir`` and hold its lock on rank 0 for the block; every rank raises the error of a
    folder in use (a collective under torchrun: every rank enters together)."""
    error = None
    stack = contextlib.ExitStack()
    if info.is_main:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            stack.enter_context(locked(out_dir))
        except UserError as e:
            error = str(e)
        except OSError as e:
            error = f"cannot use {out_dir} as a run folder: {e.strerror or e}"
    error = broadcast_object(info, error)
    if error is not None:
        stack.close()
        raise UserError(error)
    with stack:
        yield
