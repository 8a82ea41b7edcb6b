"""Orbax checkpoints that survive preemption and corruption.

Orbax writes each checkpoint to a temporary folder and renames it when complete,
so a run killed mid-save (SIGKILL included) leaves the previous checkpoints
valid; the leftover temporary folder is deleted when the run restarts.

Orbax does not checksum array data: a flipped bit in a data file restores
silently as a different number. So every save also records a SHA-256 of the
state's arrays in the checkpoint's own metadata, and ``restore_latest`` checks
it. If the newest checkpoint is unreadable or fails the check, it warns and
falls back to the one before.
"""

import contextlib
import gc
import hashlib
import json
import logging as py_logging
import os
import sys
from typing import Any
import warnings

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

DIGEST_KEY = "genmodels_state_sha256"


class CorruptCheckpointError(ValueError):
  """A checkpoint's arrays do not match the checksum recorded at save time."""


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
def _quiet_failed_reads():
  """Keeps a failed Orbax read from spraying tracebacks on stderr.

  TensorStore errors leave asyncio tasks and coroutines behind whose garbage
  collection logs "Task exception was never retrieved" with a full traceback,
  and Orbax logs an unparsable metadata file at ERROR with its whole content;
  ``restore_latest`` reports the failure itself, in one warning line.
  """
  loggers = [py_logging.getLogger(name) for name in ("asyncio", "absl")]
  levels, hook = [lg.level for lg in loggers], sys.unraisablehook
  for lg in loggers:
    lg.setLevel(py_logging.CRITICAL)
  sys.unraisablehook = lambda unraisable: None
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", RuntimeWarning)  # "never awaited"
      yield
  finally:
    gc.collect()
    sys.unraisablehook = hook
    for lg, level in zip(loggers, levels):
      lg.setLevel(level)


class Checkpointer:
  """Saves the train state every ``every`` steps; restores the newest good one."""

  def __init__(self, directory: str, every: int, max_to_keep: int = 3):
    self.directory = os.path.abspath(directory)
    self.every = int(every)
    with _quiet_failed_reads():  # It reads every step's metadata: a bad one logs.
      self._manager = ocp.CheckpointManager(
          self.directory,
          options=ocp.CheckpointManagerOptions(
              max_to_keep=max_to_keep, create=True,
              cleanup_tmp_directories=True,  # what a killed save left behind
              enable_async_checkpointing=False))
    self._bad_steps: set[int] = set()  # found unreadable: replaced when saved again

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, force: bool = False) -> bool:
    if not force and (self.every <= 0 or step % self.every):
      return False
    if step in self._manager.all_steps():
      if step not in self._bad_steps:
        return False
      self._manager.delete(step)
      self._bad_steps.discard(step)
    digest = state_digest(state)
    self._manager.save(step, args=ocp.args.StandardSave(state), force=True,
                       custom_metadata={DIGEST_KEY: digest} if digest else None)
    self._manager.wait_until_finished()
    return True

  def _recorded_digest(self, step: int) -> str | None:
    """The checksum saved with ``step``; None for a checkpoint saved without one."""
    path = os.path.join(self.directory, str(step), "_CHECKPOINT_METADATA")
    if not os.path.exists(path):  # e.g. another step name format: unverified
      return None
    custom = self._manager.metadata(step).custom_metadata or {}
    if not custom and os.path.getsize(path):
      with open(path) as f:
        json.load(f)  # Orbax reads an unparsable file as empty: raise instead.
    return custom.get(DIGEST_KEY)

  def restore(self, step: int, abstract_state: Any) -> Any:
    """The state saved at ``step``, verified against its checksum; raises if bad."""
    with _quiet_failed_reads():
      state = self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
      expected = self._recorded_digest(step)
    if expected is not None:
      actual = state_digest(state)
      if actual is not None and actual != expected:
        raise CorruptCheckpointError(
            "its arrays do not match the SHA-256 recorded when it was saved")
    return state

  def restore_latest(self, abstract_state: Any) -> tuple[int, Any] | None:
    """(step, state) of the newest good checkpoint, or None if there is none."""
    for step in reversed(self.steps()):
      try:
        return step, self.restore(step, abstract_state)
      except Exception as e:  # pylint: disable=broad-except
        self._bad_steps.add(step)
        msg = " ".join(str(e).split())[:200]
        logging.warning("checkpoint at step %d in %s is unreadable (%s: %s); "
                        "falling back to the previous one", step,
                        self.directory, type(e).__name__, msg)
    return None

  def close(self):
    self._manager.close()
