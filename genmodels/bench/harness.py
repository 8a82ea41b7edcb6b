"""The timing harness: the experiments' compiled train step, timed against a matmul.

``Step`` runs the step that training runs: ``experiment.setup(task)`` builds
the state, the device-resident data and the jitted ``multi_step`` exactly as
``loop.train`` does (``training/loop.py``'s ``setup``), and ``Step`` compiles
that very function for the loop's own sharded [k, B] indices of the first
dispatch. Only ``steps_per_dispatch=0`` differs on purpose: one plain
``steps.make_train_step`` of the task's loss per dispatch on a fixed device
batch (no ``lax.scan``), the "straightforward Flax" step for comparison.

``measure`` times steady-state windows of a case, each followed by a window of
a square matmul in the same process (the machine may be shared: the fraction
of the matmul is the median of the paired ratios).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

import jax
import jax.numpy as jnp

from genmodels.training import experiment
from genmodels.training import sharding
from genmodels.training import steps as steps_lib

from . import cases as cases_lib
from . import machine


def median(xs):
  xs = sorted(xs)
  n = len(xs)
  return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def cost(obj) -> dict:
  """XLA's cost analysis of a lowered or compiled program."""
  ca = obj.cost_analysis()
  if isinstance(ca, (list, tuple)):
    ca = ca[0] if ca else {}
  return dict(ca or {})


def compiled_memory(compiled) -> dict:
  try:
    ma = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return {}
  if ma is None:
    return {}
  keys = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
          "alias_size_in_bytes", "generated_code_size_in_bytes", "peak_memory_in_bytes")
  return {k: int(getattr(ma, k)) for k in keys if hasattr(ma, k)}


class MatmulReference:
  """Square matmul FLOP/s in this process: the ceiling a train step is held to."""

  def __init__(self, size: int):
    self.size = size
    self._fns, self._args = {}, {}
    for dtype in ("float32", "bfloat16"):
      a = jax.random.normal(jax.random.key(0), (size, size), dtype)
      b = jax.random.normal(jax.random.key(1), (size, size), dtype)
      fn = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=a.dtype))
      jax.block_until_ready(fn(a, b))
      self._fns[dtype], self._args[dtype] = fn, (a, b)
    self.flops = 2.0 * size ** 3
    # How many matmuls make one short window (paired with each timed window).
    t = self._time("float32", 1)
    self.reps = max(1, int(0.1 / max(t, 1e-6)))

  def _time(self, dtype: str, reps: int) -> float:
    fn, (a, b) = self._fns[dtype], self._args[dtype]
    t0 = time.perf_counter()
    for _ in range(reps):
      out = fn(a, b)
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / reps

  def window(self, dtype: str) -> float:
    """FLOP/s of one short window."""
    return self.flops / self._time(dtype, self.reps)

  def measure(self, dtype: str, repeats: int) -> dict:
    rates = [self.window(dtype) for _ in range(repeats)]
    return {"size": self.size, "dtype": dtype, "flops": self.flops,
            "median_flops_per_s": float(median(rates)),
            "min_flops_per_s": float(min(rates)),
            "max_flops_per_s": float(max(rates))}


class Step:
  """A task's compiled train step with the loop's inputs: what ``measure`` times.

  ``state`` starts as the loop's initial state; ``run(calls)`` dispatches the
  compiled step ``calls`` times on the indices of the run's first dispatch,
  carrying the state, and returns the last metrics.
  """

  def __init__(self, task: experiment.Task, seed: int, steps_per_dispatch: int,
               num_devices: int | None = 1, name: str = ""):
    self.name = name or task.name or "task"
    self.setup = run = experiment.setup(
        task, seed, experiment.Options(progress=False, num_devices=num_devices))
    self.state, self.seed_key = run.state, run.seed_key
    k = steps_per_dispatch
    if k == 0:  # one plain train step per dispatch, on a fixed device batch
      self.jitted = jax.jit(steps_lib.make_train_step(task.loss), donate_argnums=(0,))
      idx = run.sampler.indices(0, 1)[0]
      batch = sharding.put({key: v[idx] for key, v in task.train_data.items()},
                           sharding.batch_sharded(run.mesh))
      self.args = lambda s: (s, batch, self.seed_key)
      self.steps_per_call = 1
    else:  # the loop's step and its indices for steps 0 .. k-1
      self.jitted = run.multi_step
      idx = run.indices(0, k)
      self.args = lambda s: (s, run.data, idx, self.seed_key)
      self.steps_per_call = k
    t0 = time.perf_counter()
    self.lowered = self.jitted.lower(*self.args(self.state))
    self.compiled = self.lowered.compile()
    self.compile_seconds = time.perf_counter() - t0
    # XLA counts a while loop's body once: the cost is that of one train step.
    self.xla_flops_per_step = float(cost(self.compiled).get("flops", float("nan")))
    self.memory = compiled_memory(self.compiled)

  def one_step_flops(self) -> float:
    """FLOPs of one train step of the global program (the loop's step, k=1, lowered)."""
    run = self.setup
    lowered = run.multi_step.lower(self.state, run.data, run.indices(0, 1), self.seed_key)
    return float(cost(lowered).get("flops", float("nan")))

  def run(self, calls: int):
    state = self.state
    for _ in range(calls):
      state, metrics = self.compiled(*self.args(state))
    jax.block_until_ready(state)
    self.state = state
    return metrics


def build_step(case: cases_lib.Case, **build_kwargs) -> Step:
  """The case's task from the experiment's builder, and its compiled step."""
  task, seed = cases_lib.build_task(case, **build_kwargs)
  return Step(task, seed, case.steps_per_dispatch, case.num_devices, case.name)


def useful_flops_per_step(case: cases_lib.Case, step: Step) -> float:
  """The model's FLOPs per step as XLA counts them for lax.conv.

  For cnn_im2col this is the cost of the same step with lax.conv (the im2col
  matmuls also multiply the zero padding): the reference case's step, lowered
  but not compiled.
  """
  if case.model != "cnn_im2col":
    return step.one_step_flops()
  ref = dataclasses.replace(case, model="cnn", steps_per_dispatch=1, num_devices=1)
  return build_step_lowered_flops(ref)


def build_step_lowered_flops(case: cases_lib.Case) -> float:
  task, seed = cases_lib.build_task(case, size=max(64, case.batch_size))
  run = experiment.setup(task, seed, experiment.Options(progress=False, num_devices=1))
  lowered = run.multi_step.lower(run.state, run.data, run.indices(0, 1), run.seed_key)
  return float(cost(lowered).get("flops", float("nan")))


def measure(case: cases_lib.Case, matmul: MatmulReference, repeats: int,
            window_seconds: float, device_kind: str) -> tuple[dict, Step]:
  """One case's row (compile, step time, FLOP/s against the matmul and the peak)."""
  step = build_step(case)
  try:
    useful = useful_flops_per_step(case, step)
  except Exception:  # pylint: disable=broad-except
    useful = step.xla_flops_per_step
  step.run(1)  # warm-up
  t0 = time.perf_counter()
  step.run(1)
  per_call = time.perf_counter() - t0
  calls = max(1, round(window_seconds / max(per_call, 1e-6)))
  step_times, ratios, mm_rates = [], [], []
  mm_dtype = "bfloat16" if case.dtype == "bfloat16" else "float32"
  load0 = os.getloadavg()[0]
  for _ in range(repeats):
    t0 = time.perf_counter()
    step.run(calls)
    dt = (time.perf_counter() - t0) / (calls * step.steps_per_call)
    mm = matmul.window(mm_dtype)  # right after: under the same load
    step_times.append(dt)
    mm_rates.append(mm)
    ratios.append(useful / case.num_devices / dt / mm)
  t_step = median(step_times)
  achieved = useful / t_step
  peak = (machine.nominal_peak(device_kind, case.dtype)
          if jax.default_backend() != "cpu" else None)
  row = {
      **dataclasses.asdict(case), "name": case.name,
      "compile_seconds": step.compile_seconds,
      "step_seconds_median": t_step,
      "step_seconds_min": min(step_times), "step_seconds_max": max(step_times),
      "steps_per_second": 1.0 / t_step,
      "examples_per_second": case.batch_size / t_step,
      "windows": repeats, "dispatches_per_window": calls,
      "xla_flops_per_step": step.xla_flops_per_step,
      "useful_flops_per_step": useful,
      "useful_flops_per_example": useful / case.batch_size,
      "achieved_flops_per_second": achieved,
      "achieved_flops_per_second_per_device": achieved / case.num_devices,
      "matmul_dtype": mm_dtype,
      "matmul_flops_per_second_median": median(mm_rates),
      "fraction_of_matmul": median(ratios),
      "fraction_of_matmul_ratio_of_medians": achieved / case.num_devices / median(mm_rates),
      "nominal_peak_flops_per_second": peak,
      "fraction_of_nominal_peak": (achieved / case.num_devices / peak) if peak else None,
      "compiled_memory": step.memory,
      "device_peak_memory_bytes": machine.device_peak_memory(),
      "load_average": [load0, os.getloadavg()[0]],
  }
  return row, step


def error_row(case: cases_lib.Case, error: BaseException) -> dict:
  return {**dataclasses.asdict(case), "name": case.name,
          "input": "x".join(map(str, case.input_shape or ())) or "2-D",
          "error": f"{type(error).__name__}: {str(error)[:200]}"}


def log(message: str) -> None:
  print(f"  {message}", file=sys.stderr, flush=True)
