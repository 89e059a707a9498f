"""Exclusive locks on files (flock): no run is ever trained by two processes at once.

`agents.train` holds RUN_DIR/.lock while it trains a run (a second launch of the same run is refused), and a sweep
holds its own lock per run (agents.sweep_exec), which its training process inherits. A lock lives as long as its
descriptor: a killed process releases it, an orphaned child that inherited it keeps it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
import warnings
from pathlib import Path

RUN_LOCK = ".lock"  # the file in a run directory that agents.train holds while it trains the run
# agents.train's exit code when another process holds RUN_LOCK (sysexits' EX_TEMPFAIL: the same command may
# succeed later); a sweep counts such a launch as busy, not as a failure
EXIT_BUSY = 75


def lock_is_held(path: Path) -> bool:
    """True when some process holds the run's lock, i.e. trains the run right now."""
    try:
        # Read-write where allowed: NFS emulates flock with POSIX locks, whose exclusive kind needs a file open
        # for writing (EBADF otherwise, and a held lock would never show). Nothing is written.
        fd = os.open(path, os.O_RDWR if os.access(path, os.W_OK) else os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    except OSError:  # a filesystem without flock: nothing to tell
        return False
    finally:
        os.close(fd)


_warned_no_flock = False


@contextlib.contextmanager
def run_lock(path: Path, wait: bool):
    """Yields the lock's file descriptor, or None when another process holds it (and `wait` is False).

    A lock is only good on the file that `path` names once it is held: a file removed (or replaced) while
    this process waited for it locks nothing that the next process would see, so then it starts again."""
    global _warned_no_flock
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _acquire(fd, wait)
        except BlockingIOError:
            os.close(fd)
            yield None
            return
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP):
                os.close(fd)
                raise
            if not _warned_no_flock:
                warnings.warn(f"{path.parent} does not support flock; runs are not protected against being "
                              "trained by two processes at once", stacklevel=2)
                _warned_no_flock = True
        if _names(path, fd):
            break
        os.close(fd)
    try:
        yield fd
    finally:
        os.close(fd)


def _names(path: Path, fd: int) -> bool:
    """Whether `path` still names the file open at `fd`."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _acquire(fd: int, wait: bool, grace_s: float = 1.0) -> None:
    """flock the run's lock. Without `wait`, a holder is only believed after `grace_s`: `lock_is_held` (the
    progress display, `agents.sweep status`) takes the lock for a moment to probe it, a trainer for minutes."""
    if wait:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return
    deadline = time.monotonic() + grace_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.02)
