"""The benchmark's runs, from a checked ``spec.Request``: steps or convergence.

A run's results are written (``report.write``: temporary files renamed over
the old ones) only when it measured something: a step run whose every case
failed leaves the results file as it was and exits with status 1.
"""

from __future__ import annotations

import datetime
import os
import shutil
import sys
import tempfile
import time

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


class NothingMeasured(Exception):
  """A run that measured nothing: no results file is written or replaced."""


def _command() -> str:
  return " ".join(["python3 experiments/benchmark.py", *sys.argv[1:]])


def _start() -> dict:
  """The result's opening fields; the tag from the machine's facts."""
  return {"started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
          "load_average_at_start": list(os.getloadavg()), "command": _command()}


def _finish(req, result: dict, steal: provenance.StealMeter, markdown) -> str:
  result["run"] = machine.run_record(steal)
  text = markdown(result)
  path = report.write(req.out, result["tag"], result, text)
  print(text)
  return path


def run_convergence(req) -> None:
  steal = provenance.StealMeter()
  tag = (req.tag or machine.machine_tag(machine.facts())) + "-convergence"
  config = density_config.get_config()
  result = {"tag": tag, **_start(), "target_kl": req.convergence_kl,
            "num_train": int(config.num_train), "seed": int(config.seed)}
  result["rows"] = convergence.measure_convergence(
      req.convergence, req.convergence_kl, req.convergence_eval_every, config)
  path = _finish(req, result, steal, report.convergence_markdown)
  print(f"wrote {path} and .md", file=sys.stderr)


def _scaling(models, num_devices, n_sim, matmul, repeats, window, info) -> dict:
  backend = info["backend"]
  if jax.device_count() > 1:
    out = {"rows": scaling.measure_scaling(models, num_devices, matmul, repeats, window,
                                           info["device_kind"]),
           "note": f"{jax.device_count()} {backend} devices in this process."}
    if backend == "cpu":
      out["note"] += (" Simulated CPU devices share the same cores: the "
                      "efficiency says nothing about real multi-device scaling.")
    return out
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


def run_steps(req) -> None:
  cache_dir = tempfile.mkdtemp(prefix="genmodels_jax_cache_")
  try:
    _run_steps(req, cache_dir)
  finally:
    shutil.rmtree(cache_dir, ignore_errors=True)


def _run_steps(req, cache_dir: str) -> None:
  steal = provenance.StealMeter()
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1e9)  # off until the epoch
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  started = time.perf_counter()
  repeats, window = req.repeats, req.window_seconds
  info = machine.facts()
  tag = req.tag or machine.machine_tag(info)
  backend, device_kind = info["backend"], info["device_kind"]
  result = {"tag": tag, **_start(), "quick": req.quick, "repeats": repeats,
            "window_seconds": window}
  size = req.matmul_size or (2048 if backend == "cpu" else 8192)
  print(f"benchmark on {backend} ({device_kind}, {info['num_devices']} device(s)); "
        f"results -> {req.out}/{tag}.json", file=sys.stderr, flush=True)
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
  for case in req.cases:
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
    if req.profile and step is not None and _profiled(case):
      try:
        result["profiles"].append(
            profiler.profile(step, calls=1 if case.steps_per_dispatch else 3))
      except Exception as e:  # pylint: disable=broad-except
        result["profiles"].append(profiler.failed(case.name, e))
    del step

  if all("error" in row for row in result["cases"]):
    first = (f" (first: {result['cases'][0]['name']}: {result['cases'][0]['error']})"
             if result["cases"] else "")
    raise NothingMeasured(
        f"every case failed{first}, so {req.out}/{tag}.json was left as it was: fix "
        "what the error names, then run again")
  result["scaling"] = _scaling(req.scaling_models, req.num_devices,
                               req.cpu_scaling_devices, matmul, repeats, window, info)

  result["epoch"] = None
  if req.epoch:
    harness.log("one Fashion-MNIST epoch end to end...")
    try:
      e = epoch_lib.measure_epoch(cache_dir, req.epoch_num_train,
                                  req.epoch_conv_impl, repeats, window)
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
  path = _finish(req, result, steal, report.markdown)
  print(f"wrote {path} and .md in {result['total_seconds']:.0f} s", file=sys.stderr)


def run(req) -> None:
  """The run ``req`` asks for (its flags checked by ``cli.request``)."""
  if req.scaling_worker:
    return scaling.worker(req.scaling_worker, req.scaling_models, req.num_devices,
                          req.matmul_size, req.repeats, req.window_seconds)
  if req.convergence:
    return run_convergence(req)
  return run_steps(req)
