"""What every experiment entry point does at its edge: user errors and workdirs.

A mistake a user can make (a bad flag value, missing data, an unwritable or
mismatched workdir) is a ``genmodels.errors.UsageError`` raised on purpose: it
ends the program with one line on stderr naming the problem and the fix, and
exit status 2, never a traceback. So does a machine that refuses the run's
files (disk full, a read-only or vanished workdir). Any other exception is a
bug: it keeps its traceback and exits with 1.
"""

import errno
import functools
import logging as py_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from genmodels import workdir as workdir_lib
from genmodels.errors import UsageError

USAGE_EXIT = 2
TRAINING_FAILED_EXIT = 1


USER_ERRORS = (UsageError, flags.Error)
# OSErrors that mean the machine refused the run's files, not a bug.
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES,
                                errno.EPERM, errno.ENOENT, errno.ESTALE, errno.EIO})
INTERRUPTED_EXIT = 130


def plain_text(error: BaseException) -> str:
  """An exception's message as written: a KeyError's or AttributeError's
  ``str`` is the repr of its message (quotes and ``\\n`` escapes), not the text."""
  while True:
    args = getattr(error, "args", ())
    if isinstance(error, (KeyError, AttributeError)) and args and isinstance(args[0], str):
      error = args[0]
      continue
    if isinstance(error, BaseException) and args and isinstance(args[0], BaseException):
      error = args[0]  # a wrapped exception (absl's flags.Error wraps the config's)
      continue
    return str(error)


def one_line(error: BaseException | str) -> str:
  """An exception as one line: its plain message, whitespace collapsed."""
  text = error if isinstance(error, str) else plain_text(error)
  return " ".join(text.split()) or type(error).__name__


def fail(message: str, status: int = USAGE_EXIT, prefix: str = "error"):
  """Prints ``error: message`` on one stderr line and exits with ``status``."""
  sys.stdout.flush()
  print(f"{prefix}: {' '.join(message.split())}", file=sys.stderr, flush=True)
  sys.exit(status)


# Errors found while the entry point's flags were being defined (at import),
# reported by ``parse_flags``.
_DEFINE_ERRORS: list[str] = []


def define_config_file(name: str, default: str, help_string: str, **kwargs):
  """``config_flags.DEFINE_config_file``; a bad ``--NAME.field`` fails at parse time.

  Without ``--NAME`` on the command line, ml_collections loads the default
  config and resolves the ``--NAME.field=value`` overrides in ``sys.argv``
  while the flag is being *defined*, at import, where a mistyped field is a
  traceback before any handler runs. Here the error waits for
  ``parse_flags``, which reports it in one line.
  """
  try:
    return config_flags.DEFINE_config_file(name, default, help_string, **kwargs)
  except Exception as e:  # pylint: disable=broad-except
    overrides = [a.split("=", 1)[0] for a in sys.argv[1:]
                 if a.lstrip("-").startswith(f"{name}.")]
    _DEFINE_ERRORS.append(
        f"bad override {' '.join(overrides)}: {_config_error_text(e)}: override only "
        f"fields the config has (see --helpfull)")
    kwargs["sys_argv"] = sys.argv[:1]  # Define it without the overrides.
    return config_flags.DEFINE_config_file(name, default, help_string, **kwargs)


def _config_error_text(error: BaseException) -> str:
  """A config override's error in plain words: 'no field X; Did you mean Y?'."""
  lines = plain_text(error).strip().splitlines() or [type(error).__name__]
  head = lines[0].strip().strip("\"'")
  if isinstance(error, (KeyError, AttributeError)):
    head = f"no field {head!r}"
  rest = " ".join(line.strip() for line in lines[1:])
  return f"{head} ({rest})" if rest else head


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, but a bad flag is one line and exit status 2.

  absl's own parser prints a multi-line usage hint (for a bad ``--config``, a
  whole traceback) and exits with 1.
  """
  if _DEFINE_ERRORS:
    fail(_DEFINE_ERRORS[0])
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    # flags.Error, and whatever a config file's get_config raises.
    text = plain_text(e)
    key = text.strip().splitlines()[0].strip("\"'") if text.strip() else ""
    unknown = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("--")
               and "." in a and a.split("=", 1)[0].rsplit(".", 1)[-1] == key]
    if unknown:  # a KeyError from an override of a field the config lacks
      hint = " ".join(text.strip().splitlines()[1:])
      fail(f"unknown config field {unknown[0]}{' (' + hint + ')' if hint else ''}: override "
           "only fields the config has (see --helpfull)")
    if "Traceback (most recent call last)" in text:  # ml_collections' wrapping
      head = one_line(text.split("Traceback (most recent call last)")[0])
      last = [line for line in text.splitlines() if line.strip()][-1]
      text = f"{head.rstrip(': ')}: {last.strip()}"
    fail(f"{one_line(text) if text.strip() else type(e).__name__} (see --helpfull)")


def run(main, argv: list[str] | None = None):
  """``app.run`` for an entry point: bad flags and user errors are one line.

  Use with a main wrapped in ``one_line_errors``:
  ``if __name__ == "__main__": cli.run(main)``.
  """
  app.run(main, argv=argv, flags_parser=parse_flags)


def one_line_errors(main):
  """Wraps an absl main: user errors -> one stderr line and exit status 2.

  A non-finite loss or gradient (``loop.NonFiniteError``) is reported the same
  way with exit status 1: the run failed, the input was fine. SIGTERM or
  SIGINT (a preempted machine, a scheduler's limit, Ctrl-C) stops training at
  the next step boundary with a checkpoint, one line saying how to resume and
  exit status 128 + the signal's number (143, 130), as a killed process has.
  The workdir lock taken by ``prepare_workdir`` is released on the way out.
  """

  @functools.wraps(main)
  def wrapped(argv):
    from genmodels.training import loop  # pylint: disable=g-import-not-at-top
    from genmodels.training import preemption  # pylint: disable=g-import-not-at-top
    if "verbosity" in flags.FLAGS and not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
      _show_only_our_warnings()
    try:
      with preemption.handle_signals():
        return main(argv)
    except preemption.Preempted as e:
      fail(f"{e}; run the same command again to resume from step {e.step}",
           128 + e.signum, prefix="stopped")
    except loop.NonFiniteError as e:
      fail(one_line(e), TRAINING_FAILED_EXIT)
    except MemoryError as e:
      fail(f"out of memory ({one_line(e)}): lower the sizes asked for "
           f"(examples, batch size, model size)")
    except KeyboardInterrupt:
      fail("interrupted; run the same command again to resume from the last "
           "checkpoint", INTERRUPTED_EXIT)
    except USER_ERRORS as e:
      fail(one_line(e))
    except OSError as e:
      if e.errno not in ENVIRONMENT_ERRNOS:
        raise  # a bug: keep its traceback
      where = f" ({e.filename})" if e.filename else ""
      fail(f"the machine refused the run's files: {e.strerror or e}{where}; free space "
           f"or fix the workdir's permissions, then run the same command again to "
           f"resume from the last checkpoint")
    finally:
      workdir_lib.release_workdir()

  return wrapped


_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _OurWarningsOnly(py_logging.Filter):
  """Drops libraries' (tfds, Orbax) warnings; keeps ours and every error."""

  def filter(self, record):
    return (record.levelno >= py_logging.ERROR
            or os.path.abspath(record.pathname).startswith(_REPO_ROOT + os.sep))


def _show_only_our_warnings():
  """Without --verbosity, stderr shows genmodels' warnings, not tfds' or Orbax's."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _OurWarningsOnly) for f in handler.filters):
    handler.addFilter(_OurWarningsOnly())


# ------------------------------------------------- experiment entry points

def usage(experiment, config_module, shortcuts: dict[str, str], script: str) -> str:
  """--help's first lines: what it does, --config and its variants, the override syntax."""
  doc = (config_module.__doc__ or "").strip()
  what = doc.split("\n\n", 1)[0]
  rel = os.path.relpath(experiment.CONFIG_FILE, _REPO_ROOT)
  lines = [what, "", f"Config: --config={rel}[:VARIANT] (the default: the base config)",
           "  variants:"]
  for name, fn in config_module.VARIANTS.items():
    if not name and list(config_module.VARIANTS.values()).count(fn) > 1:
      continue  # "" is an alias of a named variant
    first = ((fn.__doc__ or "").strip().splitlines() or ["the base config"])[0]
    lines.append(f"    {name or '(default)':10s} {first}")
  example = getattr(config_module, "OVERRIDE_EXAMPLE", "--config.seed=1")
  lines += ["", "Override any config field with --config.FIELD=VALUE, e.g.",
            f"  python {script} --workdir=/tmp/run {example}"]
  if shortcuts:
    lines += ["", "Short flags for config fields: " + ", ".join(
        f"--{k} (config.{k})" for k in shortcuts)]
  rest = doc.split("\n\n", 1)[1] if "\n\n" in doc else ""
  return "\n".join(lines) + ("\n\n" + rest if rest else "") + "\n"


class ExperimentFlags:
  """The flags every experiment entry point has, defined once here."""

  def __init__(self, experiment, config_module, shortcuts: dict[str, str]):
    self.experiment, self.shortcuts = experiment, shortcuts
    self.config = define_config_file(
        "config", experiment.CONFIG_FILE,
        "ml_collections config file, optionally :VARIANT; override any field "
        "with --config.FIELD=VALUE.", lock_config=True)
    self.workdir = flags.DEFINE_string("workdir", None, "Folder for the run's outputs "
                                       "(run again to resume).")
    self.short = {name: flags.DEFINE_string(name, None, f"{help_} (sets config.{name})")
                  for name, help_ in shortcuts.items()}
    self.overwrite = flags.DEFINE_bool("overwrite", False,
                                       "Delete a run with another config in --workdir.")
    self.progress = flags.DEFINE_bool("progress", True, "Show a progress bar.")
    self.figures = flags.DEFINE_bool("figures", True, "Write PNG figures and report.md.")
    self.num_devices = flags.DEFINE_integer(
        "num_devices", None, "Data-parallel width: devices in the mesh, over all "
        "processes (default: all).", lower_bound=1)
    self.coordinator = flags.DEFINE_string(
        "coordinator_address", None, "Multi-process: host:port of process 0 "
        "(with --num_processes and --process_id; all share --workdir).")
    self.num_processes = flags.DEFINE_integer(
        "num_processes", None, "Multi-process: number of processes.", lower_bound=1)
    self.process_id = flags.DEFINE_integer(
        "process_id", None, "Multi-process: this process's rank, "
        "0..num_processes-1.", lower_bound=0)
    del config_module

  def resolved_config(self):
    """The config with the short flags applied, normalised and validated."""
    from genmodels.training import experiment as experiment_lib  # pylint: disable=g-import-not-at-top
    config = self.config.value
    for name, flag in self.short.items():
      if flag.value is not None:
        config[name] = type(config[name])(flag.value)
    if hasattr(self.experiment, "resolve"):
      self.experiment.resolve(config)
    experiment_lib.validate(self.experiment, config)
    return config


def define_experiment(experiment, config_module, shortcuts: dict[str, str] | None = None,
                      script: str = "") -> tuple["ExperimentFlags", str]:
  """Defines an entry point's flags; returns them and its --help text."""
  shortcuts = shortcuts or {}
  return (ExperimentFlags(experiment, config_module, shortcuts),
          usage(experiment, config_module, shortcuts, script))


def experiment_main(fl: ExperimentFlags):
  """The main of an experiment entry point: validate, lock the workdir, run, print."""
  from genmodels.training import distributed  # pylint: disable=g-import-not-at-top
  from genmodels.training import experiment as experiment_lib  # pylint: disable=g-import-not-at-top
  from genmodels.training import sharding  # pylint: disable=g-import-not-at-top

  @one_line_errors
  def main(argv):
    if len(argv) > 1:
      raise UsageError(f"unexpected arguments {argv[1:]}: pass options as --flags")
    # Before anything touches a device: join the other processes, if any.
    distributed.initialize(fl.coordinator.value, fl.num_processes.value,
                           fl.process_id.value)
    # Every check, then the data, before the workdir is touched: a refused
    # start leaves it as it was.
    config = fl.resolved_config()
    workdir_lib.check_workdir(fl.workdir.value, config.to_dict(), overwrite=fl.overwrite.value)
    sharding.make_mesh(fl.num_devices.value)  # enough devices for --num_devices
    data = fl.experiment.load_data(config)
    workdir = distributed.main_process_first(lambda: workdir_lib.prepare_workdir(
        fl.workdir.value, config.to_dict(), overwrite=fl.overwrite.value,
        lock=distributed.is_main_process()))
    options = experiment_lib.Options(progress=fl.progress.value,
                                     figures=fl.figures.value,
                                     num_devices=fl.num_devices.value)
    results = experiment_lib.run(fl.experiment, config, workdir, options, data=data)
    if distributed.is_main_process():
      print(fl.experiment.table(results))
      print(f"\nresults: {os.path.join(workdir, 'results.json')}")

  return main
