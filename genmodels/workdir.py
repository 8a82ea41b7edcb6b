"""A run's workdir: one live run at a time, and a config that must match.

``prepare_workdir`` locks the workdir for this process and records
``config.json``; ``check_workdir`` does every check of it that changes nothing
on disk, so an entry point can refuse a start before anything is written.
Refusals are ``UsageError``s naming the problem and the fix.
"""

import json
import os
import shutil
import tempfile

from genmodels import locking
from genmodels.errors import UsageError
from genmodels.training import metrics as metrics_lib

_WORKDIR_LOCKS: list[locking.FileLock] = []
LOCK_FILE = ".lock"


def lock_workdir(workdir: str) -> None:
  """Makes this process the one run in ``workdir``, or raises a one-line UsageError.

  The lock lives as long as the process (or until ``release_workdir``); a
  lock left by a dead process is free again (see ``genmodels.locking``).
  """
  lock = locking.FileLock(os.path.join(workdir, LOCK_FILE))
  try:
    lock.acquire(blocking=False)
  except locking.LockedError as e:
    raise UsageError(
        f"workdir {workdir} is in use by a live run: {locking.describe(e.holder)}; "
        f"wait for it to finish (or stop it), or choose another --workdir") from None
  _WORKDIR_LOCKS.append(lock)


def release_workdir(remove: bool = False) -> None:
  """Lets this process's workdir locks go; ``remove`` deletes their files too."""
  while _WORKDIR_LOCKS:
    _WORKDIR_LOCKS.pop().release(remove=remove)


def _clear(workdir: str) -> None:
  """Deletes a run's outputs, keeping the lock file this process holds."""
  for name in os.listdir(workdir):
    if name == LOCK_FILE:
      continue
    path = os.path.join(workdir, name)
    if os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path)
    else:
      os.remove(path)


def config_diff(old, new, prefix: str = "") -> list[str]:
  """The fields that differ between two configs, as ``path: old -> new`` lines."""
  if isinstance(old, dict) and isinstance(new, dict):
    out = []
    for key in sorted(set(old) | set(new), key=str):
      path = f"{prefix}.{key}" if prefix else str(key)
      if key not in old:
        out.append(f"{path}: (absent) -> {json.dumps(new[key])}")
      elif key not in new:
        out.append(f"{path}: {json.dumps(old[key])} -> (absent)")
      else:
        out += config_diff(old[key], new[key], path)
    return out
  if old == new:
    return []
  return [f"{prefix}: {json.dumps(old)} -> {json.dumps(new)}"]


def as_json(config: dict) -> dict:
  """The config as config.json records it (tuples as lists, numpy as Python)."""
  return json.loads(json.dumps(metrics_lib.to_python(config)))


def _read_config(path: str):
  """The recorded config.json, or a UsageError saying it is unreadable."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
    raise UsageError(
        f"{path} is unreadable ({type(e).__name__}: {e}), so this run's config "
        f"cannot be checked against it: restore the file to resume the run, or "
        f"--overwrite to delete the run and start again") from None


def _check_creatable(workdir: str) -> None:
  """A new workdir can be made: its nearest existing ancestor is a writable folder
  (tried with a temporary folder there, removed at once; the workdir is not made)."""
  parent = os.path.dirname(workdir)
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise UsageError(f"--workdir {workdir} is under {parent}, which is a file, not a "
                     f"folder: choose another --workdir")
  try:
    os.rmdir(tempfile.mkdtemp(prefix=".genmodels-probe-", dir=parent))
  except OSError as e:
    raise UsageError(f"cannot write to workdir {workdir} ({e.strerror or e}): "
                     f"choose a writable --workdir") from None


def check_workdir(workdir: str, config: dict, overwrite: bool = False) -> str:
  """Every check of ``workdir`` against ``config`` that changes nothing on disk.

  Returns the absolute workdir. A workdir holding a run with another config
  is refused (so a typo cannot mix two runs' checkpoints), naming each
  differing field, unless ``overwrite`` is set.
  """
  if not workdir:
    raise UsageError("--workdir is required: name a folder for the run's outputs")
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UsageError(f"--workdir {workdir} is a file, not a folder: choose "
                     f"another --workdir")
  if not os.path.exists(workdir):
    _check_creatable(workdir)
  config = as_json(config)
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path) and not overwrite:
    changed = config_diff(_read_config(path), config)
    if changed:
      shown = "; ".join(changed[:5]) + (f"; and {len(changed) - 5} more"
                                        if len(changed) > 5 else "")
      raise UsageError(
          f"workdir {workdir} holds a run with a different config ({shown}): use "
          f"another --workdir, or --overwrite to delete that run")
  return workdir


def prepare_workdir(workdir: str, config: dict, overwrite: bool = False,
                    lock: bool = True) -> str:
  """Locks ``workdir`` for this run, then records ``config.json`` there.

  Nothing changes on disk until every check has passed: a refused start
  leaves the workdir as it was (or absent). A workdir whose run is still
  alive, or that holds a run with another config (unless ``overwrite``,
  which deletes that run), is refused; the same config resumes the run. In a
  multi-process run only process 0 takes the lock (``lock=False`` on the
  others).
  """
  config = as_json(config)
  workdir = check_workdir(workdir, config, overwrite)
  path = os.path.join(workdir, "config.json")
  existed = os.path.isdir(workdir)
  had_lock = os.path.exists(os.path.join(workdir, LOCK_FILE))
  try:
    os.makedirs(workdir, exist_ok=True)
    if lock:
      lock_workdir(workdir)
  except UsageError:  # a live run holds it: leave everything as it was
    _undo_start(workdir, existed, had_lock=True)
    raise
  except OSError as e:
    _undo_start(workdir, existed, had_lock)
    raise UsageError(f"cannot write to workdir {workdir} ({e.strerror or e}): "
                     f"choose a writable --workdir") from e
  # Under the lock: what another run may have written meanwhile.
  try:
    check_workdir(workdir, config, overwrite)
  except UsageError:
    _undo_start(workdir, existed, had_lock)
    raise
  try:
    if overwrite and os.path.exists(path) and _read_config_or_none(path) != config:
      _clear(workdir)
    probe = os.path.join(workdir, ".write_test")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
    metrics_lib.write_json_atomic(path, config)
  except OSError as e:
    raise UsageError(f"cannot write to workdir {workdir} ({e.strerror or e}): "
                     f"choose a writable --workdir") from e
  return workdir


def _read_config_or_none(path: str):
  try:
    return _read_config(path)
  except UsageError:
    return None


def _undo_start(workdir: str, existed: bool, had_lock: bool) -> None:
  """Removes what a refused start made (the lock file, a new workdir), then
  lets the lock go: the workdir is left as it was."""
  release_workdir(remove=not had_lock)  # the file is removed while still held
  if not existed:
    shutil.rmtree(workdir, ignore_errors=True)
