"""Orbax checkpoints that survive preemption and corruption.

Orbax writes each checkpoint to a temporary folder and renames it when complete,
so a run killed mid-save (SIGKILL included) leaves the previous checkpoints
valid; the leftover temporary folder is deleted when the run restarts.

Orbax does not checksum array data: a flipped bit in a data file restores
silently as a different number. So every save also records a SHA-256 of the
state's arrays and the step in the checkpoint's own metadata, and
``restore_latest`` checks both. That metadata is part of what is verified: a
step whose ``_CHECKPOINT_METADATA`` is missing, empty, unparsable, without the
checksum or naming another step is not trusted, nor is one whose ``default/``
item folder is missing. If the newest checkpoint is unreadable or fails a
check, ``restore_latest`` falls back to the newest good one and says so in one
warning line (or, with none left, that training starts over).

A save the machine refuses (disk full, a read-only or vanished workdir) raises
one ``OSError`` with its errno, without Orbax's tracebacks.
"""

import contextlib
import errno
import gc
import hashlib
import json
import logging as py_logging
import os
import sys
import threading
from typing import Any
import warnings

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

DIGEST_KEY = "genmodels_state_sha256"
STEP_KEY = "genmodels_step"
METADATA_FILE = "_CHECKPOINT_METADATA"
ITEM = "default"  # Orbax's folder of the one (default) item in a step


class CorruptCheckpointError(ValueError):
  """A checkpoint fails a check: its arrays, its metadata or its folders."""


def state_digest(state: Any) -> str | None:
  """SHA-256 of every array leaf (path, dtype, shape, bytes), or None if not addressable.

  None when some leaf is not readable on this host (sharded over processes):
  such a checkpoint is restored unverified.
  """
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(
        leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    try:
      a = np.asarray(jax.device_get(leaf))
    except Exception:  # pylint: disable=broad-except
      return None
    h.update(f"{jax.tree_util.keystr(path)}|".encode())
    if a.ndim == 0 and a.dtype.kind in "biuf":  # 3 == np.int32(3) == restored 3
      h.update(f"{a.dtype.kind.replace('u', 'i')}:{a.item()!r};".encode())
    else:
      h.update(f"{a.dtype.str}{a.shape};".encode())
      h.update(a.tobytes())
  return h.hexdigest()


@contextlib.contextmanager
def _quiet_orbax():
  """Keeps a failed Orbax read or write from spraying tracebacks on stderr.

  TensorStore errors leave asyncio tasks and coroutines behind whose garbage
  collection logs "Task exception was never retrieved" (or "Event loop is
  closed") with a full traceback, Orbax logs an unparsable metadata file at
  ERROR with its whole content, and its worker threads print their own
  tracebacks; the caller reports the failure itself, in one line.
  """
  loggers = [py_logging.getLogger(name) for name in ("asyncio", "absl")]
  levels, hook = [lg.level for lg in loggers], sys.unraisablehook
  thread_hook = threading.excepthook
  for lg in loggers:
    lg.setLevel(py_logging.CRITICAL)
  sys.unraisablehook = lambda unraisable: None
  threading.excepthook = lambda args: None
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", RuntimeWarning)  # "never awaited"
      yield
  finally:
    gc.collect()  # the leftovers of a failure are collected here, quietly
    threading.excepthook = thread_hook
    sys.unraisablehook = hook
    for lg, level in zip(loggers, levels):
      lg.setLevel(level)


_quiet_failed_reads = _quiet_orbax  # the old name


# Error text of the machine refusing files, as TensorStore and Orbax word it
# when they do not raise an OSError.
_ERRNO_TEXT = (
    (errno.ENOSPC, ("no space left on device", "resource_exhausted")),
    (errno.EDQUOT, ("disk quota exceeded",)),
    (errno.EROFS, ("read-only file system",)),
    (errno.EACCES, ("permission denied", "permission_denied")),
    (errno.ENOENT, ("no such file or directory", "not_found")),
)


def _chain(error: BaseException):
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


# The errnos of a machine refusing the run's files (as ``genmodels.cli`` lists them).
REFUSED_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES,
                            errno.EPERM, errno.ENOENT, errno.ESTALE, errno.EIO})


def machine_error(error: BaseException, where: str) -> OSError | None:
  """The OSError behind ``error`` if it is the machine refusing files, else None."""
  for e in _chain(error):
    if isinstance(e, OSError) and e.errno in REFUSED_ERRNOS:
      return e
  text = " ".join(str(e) for e in _chain(error)).lower()
  for code, needles in _ERRNO_TEXT:
    if any(n in text for n in needles):
      return OSError(code, os.strerror(code), where)
  return None


def _one_line(error: BaseException, limit: int = 200) -> str:
  msg = " ".join(str(error).split())[:limit]
  return f"{type(error).__name__}: {msg}" if msg else type(error).__name__


class Checkpointer:
  """Saves the train state every ``every`` steps; restores the newest good one."""

  def __init__(self, directory: str, every: int, max_to_keep: int = 3):
    self.directory = os.path.abspath(directory)
    self.every = int(every)
    self._max_to_keep = max_to_keep
    self._manager = self._new_manager()
    self._bad_steps: set[int] = set()  # found unreadable: replaced when saved again

  def _new_manager(self) -> ocp.CheckpointManager:
    """A manager fixed to one default item: never inferred from a step on disk.

    Without ``item_handlers`` Orbax picks single- or multi-item mode from the
    first step it reads and keeps it: one step without its ``default/`` folder
    would make every other step "unreadable".
    """
    try:
      with _quiet_orbax():  # It reads every step's metadata: a bad one logs.
        return ocp.CheckpointManager(
            self.directory,
            item_handlers=ocp.StandardCheckpointHandler(),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=self._max_to_keep, create=True,
                cleanup_tmp_directories=True,  # what a killed save left behind
                enable_async_checkpointing=False))
    except Exception as e:  # pylint: disable=broad-except
      refused = machine_error(e, self.directory)
      if refused is None:
        raise
      raise refused from None

  def _renew_manager(self):
    """A fresh manager after a failed read: nothing of that read carries over."""
    with _quiet_orbax():
      try:
        self._manager.close()
      except Exception:  # pylint: disable=broad-except
        pass
    self._manager = self._new_manager()

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def _check_writable(self):
    """Raises the OSError of a checkpoint folder the machine no longer lets us write.

    Orbax would re-create a deleted folder (and its workdir) silently, and
    report a read-only one from its worker threads.
    """
    if not os.path.isdir(self.directory):
      raise FileNotFoundError(errno.ENOENT, "the checkpoint folder was deleted "
                              "during the run", self.directory)
    try:
      readonly = os.statvfs(self.directory).f_flag & os.ST_RDONLY
    except OSError as e:
      raise OSError(e.errno, e.strerror, self.directory) from None
    if readonly:
      raise OSError(errno.EROFS, os.strerror(errno.EROFS), self.directory)
    if not os.access(self.directory, os.W_OK | os.X_OK):
      raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), self.directory)

  def save(self, step: int, state: Any, force: bool = False) -> bool:
    """Saves ``state`` at ``step`` (if due); a refused write raises one OSError."""
    if not force and (self.every <= 0 or step % self.every):
      return False
    if step in self._manager.all_steps():
      if step not in self._bad_steps:
        return False
    self._check_writable()
    digest = state_digest(state)
    try:
      with _quiet_orbax():
        if step in self._bad_steps:
          if step in self._manager.all_steps():
            self._manager.delete(step)
          self._bad_steps.discard(step)
        self._manager.save(step, args=ocp.args.StandardSave(state), force=True,
                           custom_metadata={DIGEST_KEY: digest, STEP_KEY: int(step)})
        self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      refused = machine_error(e, os.path.join(self.directory, str(step)))
      if refused is None:
        raise
      raise refused from None
    return True

  def _recorded_digest(self, step: int) -> str | None:
    """The checksum saved with ``step`` (None: saved unverifiable); raises if untrusted.

    The metadata is read here, strictly: Orbax reads an empty or unparsable
    file as "no metadata", which would turn the check off.
    """
    step_dir = os.path.join(self.directory, str(step))
    path = os.path.join(step_dir, METADATA_FILE)
    if not os.path.isdir(os.path.join(step_dir, ITEM)):
      raise CorruptCheckpointError(f"its {ITEM}/ folder is missing (an incomplete "
                                   "save or copy)")
    if not os.path.exists(path):
      raise CorruptCheckpointError(f"it has no {METADATA_FILE}")
    try:
      with open(path) as f:
        meta = json.load(f)
    except ValueError:
      raise CorruptCheckpointError(
          f"its {METADATA_FILE} is {'empty' if not os.path.getsize(path) else 'unparsable'}"
      ) from None
    custom = meta.get("custom_metadata") if isinstance(meta, dict) else None
    if not isinstance(custom, dict) or DIGEST_KEY not in custom:
      raise CorruptCheckpointError(
          f"its {METADATA_FILE} has no SHA-256 of the state to check it against")
    recorded_step = custom.get(STEP_KEY, step)  # absent in older checkpoints
    if recorded_step != step:
      raise CorruptCheckpointError(
          f"its {METADATA_FILE} is that of step {recorded_step}")
    digest = custom[DIGEST_KEY]
    if digest is not None and not isinstance(digest, str):
      raise CorruptCheckpointError(f"its {METADATA_FILE} has a malformed SHA-256")
    return digest

  def restore(self, step: int, abstract_state: Any) -> Any:
    """The state saved at ``step``, verified against its checksum; raises if bad."""
    expected = self._recorded_digest(step)  # before Orbax reads anything
    try:
      with _quiet_orbax():
        state = self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
    except Exception:
      self._renew_manager()
      raise
    if expected is not None:
      actual = state_digest(state)
      if actual is not None and actual != expected:
        raise CorruptCheckpointError(
            "its arrays do not match the SHA-256 recorded when it was saved")
    return state

  def _quarantine(self, steps: list[int]) -> list[str]:
    """Moves bad steps aside as ``STEP.corrupt`` (kept for a look, ignored by Orbax).

    Left in place, a bad step would be "the newest" to Orbax: its pruning of
    old checkpoints would delete the good ones saved after it. Only a
    single-process run moves them (the others would race); there the bad
    step is replaced when it is saved again.
    """
    if jax.process_count() > 1:
      return []
    moved = []
    for step in steps:
      src = os.path.join(self.directory, str(step))
      dst = f"{src}.corrupt"
      n = 1
      while os.path.exists(dst):
        dst, n = f"{src}.corrupt{n}", n + 1
      try:
        os.rename(src, dst)
      except OSError:
        continue
      moved.append(os.path.basename(dst))
      self._bad_steps.discard(step)
    if moved:
      self._renew_manager()  # it still lists them
    return moved

  def restore_latest(self, abstract_state: Any) -> tuple[int, Any] | None:
    """(step, state) of the newest good checkpoint, or None if there is none.

    Bad steps on the way are moved aside and reported in one warning line,
    with the step restored instead (or that training starts over).
    """
    bad = []
    found = None
    for step in reversed(self.steps()):
      try:
        found = step, self.restore(step, abstract_state)
        break
      except Exception as e:  # pylint: disable=broad-except
        self._bad_steps.add(step)
        bad.append((step, e))
    if bad:
      which = (f"checkpoint at step {bad[0][0]} in {self.directory} is"
               if len(bad) == 1 else
               f"checkpoints at steps {', '.join(str(s) for s, _ in bad)} in "
               f"{self.directory} are")
      why = "; ".join(_one_line(e) if len(bad) == 1 else f"{s}: {_one_line(e, 120)}"
                      for s, e in bad)
      moved = self._quarantine([s for s, _ in bad])
      aside = f" (moved aside: {', '.join(moved)})" if moved else ""
      then = (f"falling back to step {found[0]}, the newest good one" if found
              else "no good checkpoint is left: training from scratch")
      logging.warning("%s unreadable (%s); %s%s", which, why, then, aside)
    return found

  def close(self):
    with _quiet_orbax():
      try:
        self._manager.close()
      except Exception:  # pylint: disable=broad-except
        pass
