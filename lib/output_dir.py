"""A job's output directory: checked before work starts, held by one job at a time, disk-full explained.

:func:`prepare_output_dir` turns a path that is a file, or not writable, into a :class:`ConfigError`
naming the key. :func:`hold_output_dir` is an exclusive lock on ``output_dir/.lock`` for as long as the
job runs. :func:`disk_full` finds ``Errno 28`` inside any error (a Ray task error included).

Two runs into one directory would mix their parts, and the second run's clean-up (of temporary parts a
killed run left) would delete the first run's in-flight files. The lock is ``flock`` on a file in the
directory (on NFSv4/EFS Linux maps it to a POSIX byte-range lock, which the server arbitrates); the kernel
releases it when the holder exits, however it exits, so a killed run never leaves a stale lock. The file
records who holds it (job, pid, host, start time) for the refusal message.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from lib.config import ConfigError

LOCK_FILE = ".lock"


@contextlib.contextmanager
def hold_output_dir(output_dir: str | Path, job: str) -> Iterator[None]:
    """Hold ``output_dir`` (created if missing) for the block; :class:`ConfigError` naming the holder if
    another process holds it."""
    path = Path(output_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            raise ConfigError(f"output_dir {output_dir} is in use by {holder}; wait for that run to end or use "
                              "another output_dir") from None
        os.ftruncate(fd, 0)
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        os.pwrite(fd, f"{job} (pid {os.getpid()} on {socket.gethostname()}, since {started})\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def prepare_output_dir(output_dir: str | Path, key: str = "output_dir") -> Path:
    """Create ``output_dir`` and check that files can be created in it; :class:`ConfigError` naming ``key``."""
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key}: {path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot write to {path}: {exc.strerror or exc}") from None
    return path


def disk_full(exc: BaseException) -> bool:
    """True if ``exc`` (or any exception it wraps, or a remote error's text) is ENOSPC, "No space left on device"."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        if "[Errno 28]" in str(exc) or "No space left on device" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
