"""The benchmark's flags and main (``experiments/benchmark.py`` runs ``main``).

Every flag is checked by ``request`` before anything runs or is written, and
before JAX is imported (``runner`` does the work): a bad value is one line
``error: ...`` on stderr naming the problem and the fix, and exit status 2,
as for the experiments (``genmodels.cli``). A run writes its results only
when it measured something, to a temporary file renamed over the old one.
"""

from __future__ import annotations

import errno
import math
import os

from absl import flags
from absl import logging

from genmodels import cli as cli_lib
from genmodels.errors import UsageError

from . import spec

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_OUT = os.path.join(_ROOT, "benchmarks")

_MODELS = flags.DEFINE_list(
    "models", ["mlp", "cnn", "cnn_im2col", "realnvp", "spline_flow"],
    f"Models: {', '.join(spec.MODELS)} (cnn = the book CNN with lax.conv, "
    "cnn_im2col = the same CNN with conv_impl='im2col', classify's default; "
    "cnn_fast = the fast recipe's model).")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["32", "128", "512"],
                                 "Batch sizes of the classifiers.")
_DENSITY_BATCH_SIZES = flags.DEFINE_list("density_batch_sizes", ["1024", "8192"],
                                         "Batch sizes of the density models.")
_IMAGE_SHAPES = flags.DEFINE_list(
    "image_shapes", ["32x32x3", "28x28x1"],
    "Classifier input shapes HxWxC: CIFAR-10 and Fashion-MNIST.")
_DTYPES = flags.DEFINE_list(
    "dtypes", ["float32", "bfloat16"],
    f"Computation dtypes: {', '.join(spec.DTYPES)} (the density models are float32 only).")
_STEPS_PER_DISPATCH = flags.DEFINE_list(
    "steps_per_dispatch", ["1", "25"],
    "Train steps per dispatch (lax.scan); 0: steps.make_train_step, no scan.")
_NUM_DEVICES = flags.DEFINE_list(
    "num_devices", ["1", "2", "4", "8"],
    "Device counts for the scaling measurement (weak scaling: batch per device fixed).")
_SCALING_MODELS = flags.DEFINE_list("scaling_models", ["mlp", "cnn_im2col", "realnvp"],
                                    "Models for the scaling measurement.")
_CPU_SCALING_DEVICES = flags.DEFINE_integer(
    "cpu_scaling_devices", 8, "With a single CPU device, measure scaling in a "
    "subprocess with this many simulated CPU devices (0: skip).", lower_bound=0)
_OUT = flags.DEFINE_string("out", DEFAULT_OUT, "Output folder.")
_TAG = flags.DEFINE_string("tag", None, "File name for the results (default: "
                           "derived from the backend, device and CPU).")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Timed windows per case.", lower_bound=1)
_WINDOW_SECONDS = flags.DEFINE_float("window_seconds", 0.5,
                                     "Target length of a timed window (seconds, > 0).")
_MATMUL_SIZE = flags.DEFINE_integer("matmul_size", None, "Side of the reference "
                                    "square matmul (default: 2048 on CPU, 8192 else).",
                                    lower_bound=1)
_EPOCH = flags.DEFINE_bool("epoch", True, "Measure a real Fashion-MNIST epoch "
                           "end to end against the sum of its train steps.")
_EPOCH_NUM_TRAIN = flags.DEFINE_integer("epoch_num_train", 6400,
                                        "Training images for the epoch measurement.",
                                        lower_bound=1)
_EPOCH_CONV_IMPL = flags.DEFINE_enum("epoch_conv_impl", "im2col", spec.CONV_IMPLS,
                                     "conv_impl of the CNN in the epoch measurement.")
_PROFILE = flags.DEFINE_bool("profile", True, "Profile the CNN cases: time by kind of op.")
_QUICK = flags.DEFINE_bool(
    "quick", False, "The short fixed set of cases committed under benchmarks/ "
    "(replaces the grid flags; about 5 minutes on 2 CPU cores).")
_CONVERGENCE = flags.DEFINE_list(
    "convergence", [], "Density models to train to convergence instead of the step "
    "benchmark (e.g. spline_flow,realnvp): steps/s and time to --convergence_kl.")
_CONVERGENCE_KL = flags.DEFINE_float("convergence_kl", 0.15,
                                     "KL to the truth (nats, > 0) to time the flows to.")
_CONVERGENCE_EVAL_EVERY = flags.DEFINE_integer(
    "convergence_eval_every", 250, "Steps between held-out evaluations.", lower_bound=1)
_SCALING_WORKER = flags.DEFINE_string("scaling_worker", None,
                                      "Internal: write scaling results to this file.")

# What --quick fixes: giving one of these with it would be silently ignored.
GRID_FLAGS = ("models", "batch_sizes", "density_batch_sizes", "image_shapes", "dtypes",
              "steps_per_dispatch", "num_devices", "scaling_models")


def _flag(holder) -> str:
  """``--name=value`` as the user typed it (lists joined by commas)."""
  value = holder.value
  if isinstance(value, list):
    value = ",".join(value)
  return f"--{holder.name}={value}"


def _ints(holder, lowest: int, what: str, example: str, empty_ok: bool = False):
  values = []
  for text in holder.value:
    try:
      n = int(text.strip())
    except ValueError:
      n = None
    if n is None or n < lowest:
      raise UsageError(f"{_flag(holder)}: {text.strip()!r} is not {what} (integers "
                       f">= {lowest}); give a comma-separated list such as "
                       f"--{holder.name}={example}")
    values.append(n)
  if not values and not empty_ok:
    raise UsageError(f"{_flag(holder)} is empty: give a comma-separated list such as "
                     f"--{holder.name}={example}")
  return tuple(values)


def _names(holder, valid, empty_ok: bool = False) -> tuple[str, ...]:
  names = tuple(n.strip() for n in holder.value)
  for name in names:
    if name not in valid:
      raise UsageError(f"{_flag(holder)}: unknown model {name!r}; valid: "
                       f"{', '.join(valid)}")
  if not names and not empty_ok:
    raise UsageError(f"{_flag(holder)} is empty: name at least one of {', '.join(valid)}")
  return names


def _positive_float(holder) -> float:
  if not (math.isfinite(holder.value) and holder.value > 0):
    raise UsageError(f"{_flag(holder)}: give a finite number > 0 (the default is "
                     f"{holder.default})")
  return float(holder.value)


def _grid() -> tuple[spec.Case, ...]:
  """The cases of the grid flags: models x shapes x batches x dtypes x k."""
  models = _names(_MODELS, spec.MODELS)
  try:
    shapes = tuple(spec.parse_shape(s.strip()) for s in _IMAGE_SHAPES.value)
  except UsageError as e:
    raise UsageError(f"{_flag(_IMAGE_SHAPES)}: {e}") from None
  batches = _ints(_BATCH_SIZES, 1, "a batch size", "32,128")
  density_batches = _ints(_DENSITY_BATCH_SIZES, 1, "a batch size", "1024,8192")
  dtypes = tuple(d.strip() for d in _DTYPES.value)
  for d in dtypes:
    if d not in spec.DTYPES:
      raise UsageError(f"{_flag(_DTYPES)}: unknown dtype {d!r}; valid: "
                       f"{', '.join(spec.DTYPES)}")
  ks = _ints(_STEPS_PER_DISPATCH, 0, "a number of steps per dispatch", "1,25")
  classifiers = [m for m in models if m in spec.CLASSIFIER_MODELS]
  if classifiers and not shapes:
    raise UsageError(f"{_flag(_IMAGE_SHAPES)} is empty but {', '.join(classifiers)} "
                     "need an input shape: give one such as --image_shapes=28x28x1")
  if classifiers and not dtypes:
    raise UsageError(f"{_flag(_DTYPES)} is empty: give one of {', '.join(spec.DTYPES)}")
  cases = []
  for model in models:
    classifier = model in spec.CLASSIFIER_MODELS
    for shape in shapes if classifier else [None]:
      for b in batches if classifier else density_batches:
        for d in dtypes if classifier else ["float32"]:
          for k in ks:
            cases.append(spec.Case(model, shape, b, d, k))
  return tuple(cases)


def _out_folder(path: str) -> str:
  """The absolute --out, a folder this process can write (checked, not created)."""
  if not path.strip():
    raise UsageError(f"--out is empty: name a folder for the results (default "
                     f"{DEFAULT_OUT})")
  out = os.path.abspath(os.path.expanduser(path))
  existing = out
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise UsageError(f"--out={path}: {existing} is not a folder: name a folder for "
                     f"the results (default {DEFAULT_OUT})")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise UsageError(f"--out={path}: {existing} is not writable: choose a folder "
                     "you can write to")
  return out


def _tag(tag: str | None, out: str, suffix: str) -> str | None:
  if tag is None:
    return None
  if not tag.strip() or os.sep in tag or tag.strip(".") == "":
    raise UsageError(f"--tag={tag!r}: give a plain file name such as --tag=my-machine "
                     "(no folders: --out names the folder)")
  for ext in (".json", ".md"):
    target = os.path.join(out, f"{tag}{suffix}{ext}")
    if os.path.isdir(target):
      raise UsageError(f"--tag={tag}: {target} is a folder: choose another --tag")
  return tag


def request(argv) -> spec.Request:
  """Every flag checked (UsageError naming the flag and the fix), nothing run."""
  if len(argv) > 1:
    raise UsageError(f"unexpected arguments {argv[1:]}: pass options as --flags")
  quick, convergence = _QUICK.value, _names(_CONVERGENCE, spec.DENSITY_MODELS, True)
  if quick and convergence:
    raise UsageError("--quick and --convergence are two different runs: give one")
  given = [f"--{name}" for name in GRID_FLAGS if flags.FLAGS[name].present]
  if quick and given:
    raise UsageError(f"--quick runs its fixed cases and ignores {', '.join(given)}: "
                     "drop those flags, or drop --quick to run that grid")
  cases = tuple(spec.quick_cases()) if quick else _grid()
  scaling_models = (spec.QUICK_SCALING_MODELS if quick
                    else _names(_SCALING_MODELS, spec.MODELS, empty_ok=True))
  num_devices = (spec.QUICK_NUM_DEVICES if quick else
                 _ints(_NUM_DEVICES, 1, "a device count", "1,2,4,8", empty_ok=True))
  window = _positive_float(_WINDOW_SECONDS)
  kl = _positive_float(_CONVERGENCE_KL)
  out = _out_folder(_OUT.value)
  tag = _tag(_TAG.value, out, "-convergence" if convergence else "")
  repeats = 5 if quick and not flags.FLAGS["repeats"].present else _REPEATS.value
  return spec.Request(
      quick=quick, cases=cases, scaling_models=tuple(scaling_models),
      num_devices=tuple(num_devices), cpu_scaling_devices=_CPU_SCALING_DEVICES.value,
      out=out, tag=tag, repeats=repeats, window_seconds=window,
      matmul_size=_MATMUL_SIZE.value, epoch=_EPOCH.value,
      epoch_num_train=_EPOCH_NUM_TRAIN.value, epoch_conv_impl=_EPOCH_CONV_IMPL.value,
      profile=_PROFILE.value, convergence=convergence, convergence_kl=kl,
      convergence_eval_every=_CONVERGENCE_EVAL_EVERY.value,
      scaling_worker=_SCALING_WORKER.value)


def main(argv):
  """Checks every flag, then runs (``runner``); user errors are one line, exit 2.

  ``genmodels.cli.one_line_errors`` is for training runs (Ctrl-C waits for a
  step boundary and says how to resume from a checkpoint); the benchmark has
  no checkpoint, so it reports the same errors with ``genmodels.cli.fail``
  and stops at once on Ctrl-C.
  """
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  try:
    req = request(argv)  # before JAX is imported: a mistake costs a second
    from . import runner  # pylint: disable=g-import-not-at-top
    try:
      return runner.run(req)
    except runner.NothingMeasured as e:
      cli_lib.fail(cli_lib.one_line(e), cli_lib.TRAINING_FAILED_EXIT)
  except cli_lib.USER_ERRORS as e:
    cli_lib.fail(cli_lib.one_line(e))
  except KeyboardInterrupt:
    cli_lib.fail("interrupted; a run writes its results only at its end",
                 cli_lib.INTERRUPTED_EXIT)
  except OSError as e:
    if e.errno not in cli_lib.ENVIRONMENT_ERRNOS and e.errno != errno.ENOTDIR:
      raise  # a bug: keep its traceback
    where = f" ({e.filename})" if e.filename else ""
    cli_lib.fail(f"the machine refused the benchmark's files: {e.strerror or e}{where}; "
                 "free space or fix --out's permissions, then run again")

