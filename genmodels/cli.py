"""What every experiment entry point does at its edge: user errors and workdirs.

A mistake a user can make (a bad flag value, missing data, an unwritable or
mismatched workdir) ends the program with one line on stderr naming the problem
and the fix, and exit status 2, never a traceback.
"""

import functools
import json
import os
import shutil
import sys

from absl import flags
from absl import logging

from genmodels.training import metrics as metrics_lib

USAGE_EXIT = 2
TRAINING_FAILED_EXIT = 1


class UsageError(ValueError):
  """An error in what the user asked for; the message says how to fix it."""


USER_ERRORS = (UsageError, ValueError, FileNotFoundError, PermissionError,
               NotADirectoryError, IsADirectoryError, KeyError,
               flags.Error)


def one_line_errors(main):
  """Wraps an absl main: user errors -> one stderr line and exit status 2.

  A non-finite loss or gradient (``loop.NonFiniteError``) is reported the same
  way with exit status 1: the run failed, the input was fine.
  """

  @functools.wraps(main)
  def wrapped(argv):
    from genmodels.training import loop  # pylint: disable=g-import-not-at-top
    if "verbosity" in flags.FLAGS and not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
    try:
      return main(argv)
    except loop.NonFiniteError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(TRAINING_FAILED_EXIT)
    except USER_ERRORS as e:
      msg = " ".join(str(e).split()) or type(e).__name__
      if isinstance(e, KeyError):
        msg = f"unknown key {msg}"
      print(f"error: {msg}", file=sys.stderr)
      sys.exit(USAGE_EXIT)

  return wrapped


def prepare_workdir(workdir: str, config: dict, overwrite: bool = False) -> str:
  """Creates ``workdir`` and records ``config.json`` there.

  A workdir holding a run with another config is refused (so a typo cannot mix
  two runs' checkpoints) unless ``overwrite`` is set, which deletes that run.
  The same config resumes the run.
  """
  if not workdir:
    raise UsageError("--workdir is required: name a folder for the run's outputs")
  workdir = os.path.abspath(os.path.expanduser(workdir))
  path = os.path.join(workdir, "config.json")
  config = json.loads(json.dumps(metrics_lib.to_python(config)))
  if os.path.exists(path):
    try:
      with open(path) as f:
        old = json.load(f)
    except (OSError, json.JSONDecodeError):
      old = None
    if old != config:
      if not overwrite:
        changed = sorted(k for k in set(config) | set(old or {})
                         if (old or {}).get(k) != config.get(k))
        raise UsageError(
            f"workdir {workdir} holds a run with a different config (differs in: "
            f"{', '.join(changed) or 'unreadable config.json'}): use another "
            f"--workdir, or --overwrite to delete that run")
      shutil.rmtree(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, ".write_test")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
    with open(path + ".tmp", "w") as f:
      json.dump(config, f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)
  except OSError as e:
    raise UsageError(f"cannot write to workdir {workdir} ({e.strerror or e}): "
                     f"choose a writable --workdir") from e
  return workdir
