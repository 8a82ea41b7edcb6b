"""File locks between processes: one preparer per dataset, one run per workdir.

Both use ``flock(2)``: the kernel drops the lock when its holder exits, however
it exits (kill -9 and a crashed machine included), so a stale lock file never
blocks anyone. The lock file also records its holder (pid, host, command) so
that a refused caller can name it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time


class LockedError(RuntimeError):
  """Another live process holds the lock; ``holder`` describes it."""

  def __init__(self, path: str, holder: dict):
    self.path, self.holder = path, holder
    super().__init__(f"{path} is locked by {describe(holder)}")


def describe(holder: dict) -> str:
  if not holder:
    return "another process"
  started = holder.get("started")
  when = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
          if started else "?")
  return (f"pid {holder.get('pid')} on {holder.get('host')} (started {when}: "
          f"{holder.get('command', '?')})")


def read_holder(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


class FileLock:
  """An exclusive lock on ``path`` (created if missing), held until ``release``."""

  def __init__(self, path: str):
    self.path = path
    self._fd: int | None = None

  def acquire(self, blocking: bool = True) -> "FileLock":
    """Takes the lock; with ``blocking=False`` raises ``LockedError`` if held."""
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except OSError as e:
      os.close(fd)
      if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        raise LockedError(self.path, read_holder(self.path)) from None
      raise
    self._fd = fd
    holder = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.time(), "command": " ".join(sys.argv)[:300]}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)
    return self

  def release(self):
    if self._fd is not None:
      # Empty the record first: a reader never names a process that has let go.
      os.ftruncate(self._fd, 0)
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  @property
  def held(self) -> bool:
    return self._fd is not None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


@contextlib.contextmanager
def exclusive(path: str):
  """Blocks until this process alone holds the lock on ``path``."""
  with FileLock(path):
    yield
