"""File locks between processes: one preparer per dataset, one run per workdir.

Both use ``flock(2)``: the kernel drops the lock when its holder exits, however
it exits (kill -9 and a crashed machine included), so a stale lock file never
blocks anyone. The lock file also records its holder (pid, host, command) so
that a refused caller can name it.

A flock belongs to a file, not to its name: a lock file deleted or replaced
under a live holder would admit a second process on a fresh file. So a holder
guards its path: a thread checks every ``POLL_SECONDS`` that the file at the
path is still the one it holds, and puts its own back (adopting an unlocked
stand-in, or replacing the file of a newcomer still settling). A newcomer
holds its lock as "pending" for ``SETTLE_SECONDS``, longer than a holder
takes to notice, and takes it only if its file is still the one at the path;
otherwise it tries again, and finds the live holder's lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time

POLL_SECONDS = 0.04  # how often a holder checks that its file is still at the path
SETTLE_SECONDS = 0.2  # how long a newcomer waits for a holder to reclaim the path


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


def _same_file(fd: int, path: str) -> bool:
  """Whether ``path`` names the file open as ``fd`` (False if nothing is there)."""
  try:
    st = os.stat(path)
  except FileNotFoundError:
    return False
  fst = os.fstat(fd)
  return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)


def _write_record(fd: int, record: dict):
  os.ftruncate(fd, 0)
  os.pwrite(fd, json.dumps(record).encode(), 0)


def _read_fd(fd: int) -> dict:
  try:
    return json.loads(os.pread(fd, 1 << 16, 0).decode())
  except (OSError, ValueError):
    return {}


class FileLock:
  """An exclusive lock on ``path`` (created if missing), held until ``release``.

  The file at ``path`` is verified after locking (a file deleted or replaced
  meanwhile is locked again) and guarded while held (see the module's doc).
  """

  def __init__(self, path: str):
    self.path = path
    self._fd: int | None = None
    self._record: dict = {}
    self._mutex = threading.Lock()  # the guard thread vs. release
    self._stop = threading.Event()
    self._guard: threading.Thread | None = None
    self._warned = False

  def acquire(self, blocking: bool = True) -> "FileLock":
    """Takes the lock; with ``blocking=False`` raises ``LockedError`` if held."""
    self._record = {"pid": os.getpid(), "host": socket.gethostname(),
                    "started": time.time(), "command": " ".join(sys.argv)[:300]}
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
      except OSError as e:
        holder = _read_fd(fd)
        os.close(fd)
        if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
          raise LockedError(self.path, holder) from None
        raise
      try:
        if not _same_file(fd, self.path):  # deleted or replaced before we locked
          os.close(fd)
          continue
        # Pending: a live holder whose file was deleted or replaced puts its
        # own back meanwhile, and we find its lock on the next try.
        _write_record(fd, {**self._record, "pending": True})
        time.sleep(SETTLE_SECONDS)
        if not _same_file(fd, self.path):
          os.close(fd)
          continue
        _write_record(fd, self._record)
      except BaseException:
        os.close(fd)
        raise
      self._fd = fd
      break
    self._stop.clear()
    self._guard = threading.Thread(target=self._guard_path, daemon=True,
                                   name=f"FileLock guard {self.path}")
    self._guard.start()
    return self

  def _guard_path(self):
    """While held: keeps the file at the path the one this lock holds."""
    missing = 0
    while not self._stop.wait(POLL_SECONDS):
      try:
        with self._mutex:
          if self._stop.is_set() or self._fd is None:
            return
          if _same_file(self._fd, self.path):
            missing = 0
            continue
          missing += 1
          if missing >= 2:  # seen twice: not a release unlinking its own file
            self._reclaim()
            missing = 0
      except OSError:
        pass  # e.g. the folder itself is gone: nothing to guard

  def _reclaim(self):
    """Puts a file this lock holds back at the path (under ``_mutex``)."""
    try:
      other = os.open(self.path, os.O_RDWR)
    except FileNotFoundError:
      other = None
    if other is not None:
      try:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
          os.close(other)
          raise
        holder = _read_fd(other)
        os.close(other)
        if holder and not holder.get("pending"):  # another holder, past settling
          if not self._warned:
            self._warned = True
            print(f"warning: lock file {self.path} was replaced and is now held by "
                  f"{describe(holder)}", file=sys.stderr, flush=True)
          return
      else:  # an unlocked stand-in: adopt it
        if _same_file(other, self.path):
          _write_record(other, self._record)
          os.close(self._fd)
          self._fd = other
          return
        os.close(other)
    # Missing, or a newcomer's file still settling: our own file in its place.
    tmp = f"{self.path}.{os.getpid()}.reclaim"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      _write_record(fd, self._record)
      os.replace(tmp, self.path)
    except BaseException:
      os.close(fd)
      with contextlib.suppress(OSError):
        os.remove(tmp)
      raise
    os.close(self._fd)
    self._fd = fd

  def release(self, remove: bool = False):
    """Lets the lock go; ``remove`` also deletes the lock file if it is ours."""
    if self._guard is not None:
      self._stop.set()
      self._guard.join()
      self._guard = None
    with self._mutex:
      if self._fd is not None:
        if remove and _same_file(self._fd, self.path):
          with contextlib.suppress(OSError):
            os.remove(self.path)
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
