"""The pidfile: one live instance per file, immune to pid reuse and stale files.

Why this module exists: a pidfile that is just "write the pid, check it with
kill(pid, 0)" blocks a restart after SIGKILL when the pid has been reused, and
can be pointed elsewhere with a symlink.  Here the file's *lock* is the proof
of life: an ``flock`` held on the open file dies with the process, so a file
left by a killed instance is unlocked and reclaimed, whatever pid it names.

Rules: open with ``O_NOFOLLOW`` (never through a symlink), refuse a directory
that anyone may write into unless it is sticky or ours, check after locking
that the path still names the file we locked, and on release unlink only if
the path still names our inode and still holds our pid.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat

from graceserve.errors import StartupError

__all__ = ["PidFile"]

log = logging.getLogger("graceserve")

_ATTEMPTS = 5


class PidFile:
    """An exclusively locked pidfile.  Not thread-safe: use from the controller thread."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self._fd: int | None = None
        self._pid = 0

    @property
    def held(self) -> bool:
        """Whether this process holds the file."""
        return self._fd is not None

    def acquire(self, pid: int | None = None) -> None:
        """Lock the file and write ``pid`` (default: ours); StartupError if we can't."""
        self._check_directory()
        for _ in range(_ATTEMPTS):
            fd = self._open()
            try:
                self._lock(fd)
                if not self._still_at_path(fd):
                    os.close(fd)  # replaced or removed between open and lock: again
                    continue
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            self._claim(pid if pid is not None else os.getpid())
            return
        raise StartupError(f"pidfile {self.path} keeps being replaced; giving up")

    @property
    def fileno(self) -> int | None:
        """The locked descriptor, or None."""
        return self._fd

    def release(self) -> None:
        """Remove the file if it is still ours, then drop the lock.  Idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if self._still_at_path(fd) and _read(fd) == self._pid:
                os.unlink(self.path)
            else:
                log.warning("pidfile %s was replaced by someone else; leaving it", self.path)
        except OSError as exc:
            log.warning("could not remove pidfile %s: %s", self.path, exc)
        finally:
            os.close(fd)

    def _check_directory(self) -> None:
        directory = os.path.dirname(self.path)
        try:
            info = os.stat(directory)
        except FileNotFoundError:
            raise StartupError(f"pidfile directory {directory} does not exist") from None
        except OSError as exc:
            raise StartupError(f"pidfile directory {directory}: {exc.strerror}") from None
        if not stat.S_ISDIR(info.st_mode):
            raise StartupError(f"pidfile directory {directory} is not a directory")
        open_to_all = info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX
        if open_to_all and info.st_uid != os.geteuid():
            raise StartupError(
                f"refusing pidfile in {directory}: anyone may write there and it is not ours"
            )

    def _open(self) -> int:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; cleared below.
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StartupError(f"refusing pidfile {self.path}: it is a symbolic link") from None
            raise StartupError(f"cannot open pidfile {self.path}: {exc.strerror}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise StartupError(f"pidfile {self.path} is not a regular file")
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _lock(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read(fd)
            who = f"pid {owner}" if owner else "another process"
            raise StartupError(
                f"already running as {who} (pidfile {self.path} is locked)"
            ) from None

    def _still_at_path(self, fd: int) -> bool:
        try:
            there = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        ours = os.fstat(fd)
        return (there.st_dev, there.st_ino) == (ours.st_dev, ours.st_ino)

    def _claim(self, pid: int) -> None:
        assert self._fd is not None
        stale = _read(self._fd)
        if stale and stale != pid:
            log.warning("reclaiming stale pidfile %s left by pid %d", self.path, stale)
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{pid}\n".encode(), 0)
        self._pid = pid


def _read(fd: int) -> int:
    """The pid written in the file, or 0."""
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else 0
    except OSError:
        return 0
