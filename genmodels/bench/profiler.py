"""The profiler summary: a compiled step's time by kind of XLA op, from a jax.profiler trace."""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
import time

import jax

_CONTAINERS = ("while", "call", "conditional", "command_buffer")

NOTE = ("op time summed over XLA's worker threads (CPU) or device streams: it "
        "can exceed the wall time when ops run in parallel")


def op_kind(name: str) -> str:
  """The kind of an XLA op (or library kernel) by its name in the trace."""
  n = name.lower()
  if n.startswith(("ynn_fusion", "xnn_fusion", "onednn", "dot", "convolution", "cublas",
                   "gemm", "cutlass", "sm90_", "sm80_", "ampere_", "volta_", "triton_gemm")):
    return "matmul and convolution"
  if n.startswith(("conv", "custom-call")) and "convert" not in n:
    return "matmul and convolution"
  if n.startswith(("concatenate", "pad", "slice", "dynamic", "copy", "transpose",
                   "gather", "scatter", "bitcast")):
    return "data movement (concatenate, pad, slice, copy, gather)"
  if "reduce" in n:
    return "reductions"
  if n.startswith(("all-reduce", "all-gather", "reduce-scatter", "collective")):
    return "collectives"
  return "elementwise fusions (BatchNorm, activations, Adam)"


def summarize(path: str, steps: int) -> tuple[dict, dict]:
  """(ms per step by kind of op, ms per step by op) of the newest trace under ``path``."""
  from jax.profiler import ProfileData  # pylint: disable=g-import-not-at-top
  files = sorted(glob.glob(os.path.join(path, "**", "*.xplane.pb"), recursive=True))
  data = ProfileData.from_file(files[-1])
  kinds, ops = {}, {}
  for plane in data.planes:
    device_plane = plane.name.startswith("/device:")
    for line in plane.lines:
      if not (device_plane or line.name.startswith("tf_XLAEigen")):
        continue
      for ev in line.events:
        if (ev.name.startswith(("ThunkExecutor", "$") + _CONTAINERS)
            or " " in ev.name):  # host frames and loop containers (nested)
          continue
        ms = ev.duration_ns / 1e6 / steps
        kinds[op_kind(ev.name)] = kinds.get(op_kind(ev.name), 0.0) + ms
        ops[ev.name] = ops.get(ev.name, 0.0) + ms
  return kinds, ops


def profile(step, calls: int = 2) -> dict:
  """Time per train step of a ``harness.Step`` by kind of XLA op."""
  tmp = tempfile.mkdtemp(prefix="genmodels_profile_")
  try:
    step.run(1)
    t0 = time.perf_counter()
    jax.profiler.start_trace(tmp)
    step.run(calls)
    jax.profiler.stop_trace()
    nsteps = calls * step.steps_per_call
    wall = (time.perf_counter() - t0) / nsteps
    kinds, ops = summarize(tmp, nsteps)
    top = sorted(ops.items(), key=lambda kv: -kv[1])[:12]
    return {"case": step.name, "wall_ms_per_step_while_tracing": wall * 1e3,
            "op_ms_per_step_by_kind": dict(sorted(kinds.items(), key=lambda kv: -kv[1])),
            "op_ms_per_step_total": sum(kinds.values()),
            "top_ops_ms_per_step": dict(top), "note": NOTE}
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def failed(name: str, error: BaseException) -> dict:
  return {"case": name, "error": f"{type(error).__name__}: {error}",
          "op_ms_per_step_by_kind": {}, "op_ms_per_step_total": float("nan"),
          "wall_ms_per_step_while_tracing": float("nan")}
