"""The benchmark's flags and main (``experiments/benchmark.py`` runs ``main``)."""

from __future__ import annotations

import datetime
import os
import shutil
import sys
import tempfile
import time

from absl import app
from absl import flags
from absl import logging

import jax

from genmodels.density import config as density_config
from genmodels.training import provenance

from . import cases as cases_lib
from . import convergence
from . import epoch as epoch_lib
from . import harness
from . import machine
from . import profiler
from . import report
from . import scaling

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_MODELS = flags.DEFINE_list(
    "models", ["mlp", "cnn", "cnn_im2col", "realnvp", "spline_flow"],
    f"Models: {', '.join(cases_lib.MODELS)} (cnn = the book CNN with lax.conv, "
    "cnn_im2col = the same CNN with conv_impl='im2col', classify's default; "
    "cnn_fast = the fast recipe's model).")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["32", "128", "512"],
                                 "Batch sizes of the classifiers.")
_DENSITY_BATCH_SIZES = flags.DEFINE_list("density_batch_sizes", ["1024", "8192"],
                                         "Batch sizes of the density models.")
_IMAGE_SHAPES = flags.DEFINE_list(
    "image_shapes", ["32x32x3", "28x28x1"],
    "Classifier input shapes HxWxC: CIFAR-10 and Fashion-MNIST.")
_DTYPES = flags.DEFINE_list("dtypes", ["float32", "bfloat16"],
                            "Computation dtypes (the density models are float32 only).")
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
    "subprocess with this many simulated CPU devices (0: skip).")
_OUT = flags.DEFINE_string("out", os.path.join(_ROOT, "benchmarks"), "Output folder.")
_TAG = flags.DEFINE_string("tag", None, "File name for the results (default: "
                           "derived from the backend, device and CPU).")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Timed windows per case.", lower_bound=1)
_WINDOW_SECONDS = flags.DEFINE_float("window_seconds", 0.5,
                                     "Target length of a timed window.")
_MATMUL_SIZE = flags.DEFINE_integer("matmul_size", None, "Side of the reference "
                                    "square matmul (default: 2048 on CPU, 8192 else).")
_EPOCH = flags.DEFINE_bool("epoch", True, "Measure a real Fashion-MNIST epoch "
                           "end to end against the sum of its train steps.")
_EPOCH_NUM_TRAIN = flags.DEFINE_integer("epoch_num_train", 6400,
                                        "Training images for the epoch measurement.")
_EPOCH_CONV_IMPL = flags.DEFINE_string("epoch_conv_impl", "im2col",
                                       "conv_impl of the CNN in the epoch measurement.")
_PROFILE = flags.DEFINE_bool("profile", True, "Profile the CNN cases: time by kind of op.")
_QUICK = flags.DEFINE_bool(
    "quick", False, "The short fixed set of cases committed under benchmarks/ "
    "(replaces the grid flags; about 5 minutes on 2 CPU cores).")
_CONVERGENCE = flags.DEFINE_list(
    "convergence", [], "Density models to train to convergence instead of the step "
    "benchmark (e.g. spline_flow,realnvp): steps/s and time to --convergence_kl.")
_CONVERGENCE_KL = flags.DEFINE_float("convergence_kl", 0.15,
                                     "KL to the truth (nats) to time the flows to.")
_CONVERGENCE_EVAL_EVERY = flags.DEFINE_integer(
    "convergence_eval_every", 250, "Steps between held-out evaluations.", lower_bound=1)
_SCALING_WORKER = flags.DEFINE_string("scaling_worker", None,
                                      "Internal: write scaling results to this file.")


def grid_cases() -> list[cases_lib.Case]:
  """The cases of the grid flags: models x shapes x batches x dtypes x k."""
  cases = []
  for model in _MODELS.value:
    try:
      cases_lib.check_model(model)
    except ValueError as e:
      raise app.UsageError(str(e)) from None
    classifier = model in cases_lib.CLASSIFIER_MODELS
    shapes = ([cases_lib.parse_shape(s) for s in _IMAGE_SHAPES.value]
              if classifier else [None])
    batches = _BATCH_SIZES.value if classifier else _DENSITY_BATCH_SIZES.value
    dtypes = _DTYPES.value if classifier else ["float32"]
    for shape in shapes:
      for b in batches:
        for d in dtypes:
          for k in _STEPS_PER_DISPATCH.value:
            cases.append(cases_lib.Case(model, shape, int(b), d, int(k)))
  return cases


def _command() -> str:
  return " ".join(["python3 experiments/benchmark.py", *sys.argv[1:]])


def _start() -> dict:
  """The result's opening fields; the tag from the machine's facts."""
  return {"started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
          "load_average_at_start": list(os.getloadavg()), "command": _command()}


def _finish(result: dict, steal: provenance.StealMeter, markdown) -> str:
  result["run"] = machine.run_record(steal)
  text = markdown(result)
  path = report.write(_OUT.value, result["tag"], result, text)
  print(text)
  return path


def run_convergence(names) -> None:
  steal = provenance.StealMeter()
  tag = (_TAG.value or machine.machine_tag(machine.facts())) + "-convergence"
  config = density_config.get_config()
  result = {"tag": tag, **_start(), "target_kl": _CONVERGENCE_KL.value,
            "num_train": int(config.num_train), "seed": int(config.seed)}
  result["rows"] = convergence.measure_convergence(
      names, _CONVERGENCE_KL.value, _CONVERGENCE_EVAL_EVERY.value, config)
  path = _finish(result, steal, report.convergence_markdown)
  print(f"wrote {path} and .md", file=sys.stderr)


def _scaling(models, num_devices, matmul, repeats, window, info) -> dict:
  backend = info["backend"]
  if jax.device_count() > 1:
    out = {"rows": scaling.measure_scaling(models, num_devices, matmul, repeats, window,
                                           info["device_kind"]),
           "note": f"{jax.device_count()} {backend} devices in this process."}
    if backend == "cpu":
      out["note"] += (" Simulated CPU devices share the same cores: the "
                      "efficiency says nothing about real multi-device scaling.")
    return out
  n_sim = _CPU_SCALING_DEVICES.value
  if backend == "cpu" and n_sim > 1:
    harness.log("scaling over simulated CPU devices (subprocess)...")
    out = scaling.in_subprocess(models, num_devices, n_sim, repeats, window)
    out["note"] = (
        f"{n_sim} simulated CPU devices (--xla_force_host_platform_device_count) in a "
        f"subprocess. They share the same {info['cpu_cores_usable']} cores, so N "
        "devices do N times the work on the same hardware: efficiency ~1/N is "
        "expected and says nothing about real multi-device scaling. It shows the "
        "sharded step runs and what the partitioning costs. Run on a multi-GPU/TPU "
        "host for real numbers.")
    return out
  return {"note": "one device: no scaling measurement"}


def _profiled(case: cases_lib.Case) -> bool:
  """The CNN cases whose time by kind of op the report shows."""
  return (case.input_shape == (32, 32, 3) and case.batch_size == 32
          and case.dtype == "float32"
          and ((case.model == "cnn" and case.steps_per_dispatch in (0, 1))
               or (case.model == "cnn_im2col" and case.steps_per_dispatch == 25)))


def run_steps(quick: bool) -> None:
  case_list = cases_lib.quick_cases() if quick else grid_cases()  # usage errors first
  cache_dir = tempfile.mkdtemp(prefix="genmodels_jax_cache_")
  try:
    _run_steps(quick, case_list, cache_dir)
  finally:
    shutil.rmtree(cache_dir, ignore_errors=True)


def _run_steps(quick: bool, case_list, cache_dir: str) -> None:
  steal = provenance.StealMeter()
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1e9)  # off until the epoch
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  started = time.perf_counter()
  repeats = 5 if quick and not flags.FLAGS["repeats"].present else _REPEATS.value
  window = _WINDOW_SECONDS.value
  info = machine.facts()
  tag = _TAG.value or machine.machine_tag(info)
  backend, device_kind = info["backend"], info["device_kind"]
  result = {"tag": tag, **_start(), "quick": quick, "repeats": repeats,
            "window_seconds": window}
  size = _MATMUL_SIZE.value or (2048 if backend == "cpu" else 8192)
  print(f"benchmark on {backend} ({device_kind}, {info['num_devices']} device(s)); "
        f"results -> {_OUT.value}/{tag}.json", file=sys.stderr, flush=True)
  matmul = harness.MatmulReference(size)
  result["matmul"] = [matmul.measure(d, repeats) for d in ("float32", "bfloat16")]
  notes = [f"Each timed window is followed by a window of {matmul.reps} {size}^2 "
           "matmul(s) of the case's dtype; % matmul is the median of the paired ratios.",
           "Every step is the experiment's own: the task from classify.make_task or "
           "density.make_task with the case's overrides, and the jitted step, state, "
           "data and indices from experiment.setup, as loop.train builds them."]
  for r in result["matmul"]:
    harness.log(f"matmul {r['size']} {r['dtype']}: "
                f"{r['median_flops_per_s'] / 1e9:.1f} GFLOP/s")

  result["cases"], result["profiles"] = [], []
  for case in case_list:
    try:
      row, step = harness.measure(case, matmul, repeats, window, device_kind)
    except Exception as e:  # pylint: disable=broad-except
      row, step = harness.error_row(case, e), None
    result["cases"].append(row)
    if "error" in row:
      harness.log(f"{case.name}: {row['error']}")
    else:
      harness.log(f"{case.name}: compile {row['compile_seconds']:.1f} s, "
                  f"{row['step_seconds_median'] * 1e3:.2f} ms/step, "
                  f"{row['examples_per_second']:,.0f} ex/s, "
                  f"{row['achieved_flops_per_second'] / 1e9:.2f} GFLOP/s = "
                  f"{100 * row['fraction_of_matmul']:.1f}% of matmul")
    if _PROFILE.value and step is not None and _profiled(case):
      try:
        result["profiles"].append(
            profiler.profile(step, calls=1 if case.steps_per_dispatch else 3))
      except Exception as e:  # pylint: disable=broad-except
        result["profiles"].append(profiler.failed(case.name, e))
    del step

  models = (cases_lib.QUICK_SCALING_MODELS if quick
            else tuple(_SCALING_MODELS.value))
  num_devices = (cases_lib.QUICK_NUM_DEVICES if quick
                 else tuple(int(n) for n in _NUM_DEVICES.value))
  result["scaling"] = _scaling(models, num_devices, matmul, repeats, window, info)

  result["epoch"] = None
  if _EPOCH.value:
    harness.log("one Fashion-MNIST epoch end to end...")
    try:
      e = epoch_lib.measure_epoch(cache_dir, _EPOCH_NUM_TRAIN.value,
                                  _EPOCH_CONV_IMPL.value, repeats, window)
      harness.log(f"epoch {e['epoch_seconds']:.2f} s vs sum of steps "
                  f"{e['sum_of_train_steps_seconds']:.2f} s: "
                  f"{100 * e['overhead_fraction']:+.1f}%")
    except Exception as err:  # pylint: disable=broad-except
      e = {"error": f"{type(err).__name__}: {str(err)[:500]}"}
      harness.log(f"epoch failed: {e['error']}")
    result["epoch"] = e

  if backend == "cpu":
    notes.append("No nominal peak for CPUs: the fraction of the same-process "
                 "matmul is the measure.")
  elif not (machine.nominal_peak(device_kind, "bfloat16")
            or machine.nominal_peak(device_kind, "float32")):
    notes.append(f"device kind {device_kind!r} is not in NOMINAL_PEAKS_TFLOPS")
  notes.append("XLA's cost analysis counts a lax.scan (while loop) body once, so "
               "the FLOPs of a multi-step program are those of one train step.")
  result.update(device_peak_memory_bytes=machine.device_peak_memory(),
                total_seconds=time.perf_counter() - started, notes=notes)
  path = _finish(result, steal, report.markdown)
  print(f"wrote {path} and .md in {result['total_seconds']:.0f} s", file=sys.stderr)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  if _SCALING_WORKER.value:
    return scaling.worker(_SCALING_WORKER.value, _SCALING_MODELS.value,
                          [int(n) for n in _NUM_DEVICES.value], _MATMUL_SIZE.value,
                          _REPEATS.value, _WINDOW_SECONDS.value)
  if _CONVERGENCE.value:
    unknown = sorted(set(_CONVERGENCE.value) - set(cases_lib.DENSITY_MODELS))
    if unknown:
      raise app.UsageError(f"unknown --convergence model(s) {unknown}; valid: "
                           f"{', '.join(cases_lib.DENSITY_MODELS)}")
    return run_convergence(_CONVERGENCE.value)
  return run_steps(_QUICK.value)
