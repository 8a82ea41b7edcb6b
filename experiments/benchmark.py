r"""Benchmarks of the engine's train step, on whatever backend is present.

  python experiments/benchmark.py --quick        # the committed CPU results, ~5 min
  python experiments/benchmark.py                # the full grid (long on a CPU)
  python experiments/benchmark.py --models=cnn_im2col --batch_sizes=32,256 \
      --dtypes=float32,bfloat16 --steps_per_dispatch=1,25

On an accelerator (GPU/TPU) run the same command there: it picks the backend
JAX finds, sizes the matmul reference for it, looks up the chip's nominal peak
by its device kind, reads peak memory from the device, and measures scaling
over the real devices. Then commit benchmarks/<machine>.{json,md}.

Every number comes from the engine's own code: the step is
``jax.jit(steps.make_multi_step(loss_fn), donate_argnums=(0,))`` with the loss
functions of ``training/objectives.py``, the dataset resident on device, and
[k, B] index arrays sharded over the mesh, exactly as ``loop.train`` builds it
(the epoch measurement checks that by reusing the compiled program through
JAX's compilation cache). ``--steps_per_dispatch`` may include 0: one
``steps.make_train_step`` per dispatch on a fixed device batch (no lax.scan).

Per case: compile time; steady-state steps/s and examples/s (median of
``--repeats`` timed windows after warm-up, each ended by block_until_ready);
FLOPs per step from XLA's cost analysis; achieved FLOP/s as a fraction of (a)
a square matmul's FLOP/s measured in the same process, in a window right after
each timed window (the machine may be shared; the median of the paired ratios
is reported), and (b) the chip's nominal dense peak when known; the compiled
program's memory (all backends) and the device's peak memory (where the
backend reports it). Then: scaling from 1 to N devices, the CNN's time by kind
of XLA op (from a jax.profiler trace), and one real Fashion-MNIST epoch through
``classification.train_and_evaluate`` against the sum of its train steps.

Writes ``--out/<machine tag>.json`` and ``.md``.

``--convergence=spline_flow,realnvp`` instead trains those density models with
the default density_mle config on the default 100,000 world-map points,
evaluating every ``--convergence_eval_every`` steps, and reports steps/s and
the training time (evaluations excluded) until the held-out KL to the truth
first reaches ``--convergence_kl`` (0.15 nats); it writes
``--out/<machine tag>-convergence.json`` and ``.md``.
"""

import contextlib
import dataclasses
import datetime
import glob
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
from absl import logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)

CLASSIFIER_MODELS = ("mlp", "cnn", "cnn_im2col")
DENSITY_MODELS = ("gmm", "realnvp", "spline_flow")

_MODELS = flags.DEFINE_list(
    "models", ["mlp", "cnn", "cnn_im2col", "realnvp", "spline_flow"],
    f"Models: {', '.join(CLASSIFIER_MODELS + DENSITY_MODELS)} (cnn = the book "
    "CNN with lax.conv, cnn_im2col = the same CNN with conv_impl='im2col').")
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

# Nominal dense peaks in TFLOP/s per chip, matched on jax's device_kind in this
# order (first substring that matches). fp32: the non-tensor-core rate (XLA's
# default precision may use TF32 / bf16 passes and beat it). Sources: vendor
# datasheets (NVIDIA H100/H200/A100/L4/T4, Google Cloud TPU system architecture).
NOMINAL_PEAKS_TFLOPS = (
    ("H200", {"bfloat16": 989.4, "float32": 66.9}),
    ("H100 PCIe", {"bfloat16": 756.0, "float32": 51.2}),
    ("H100", {"bfloat16": 989.4, "float32": 66.9}),
    ("A100", {"bfloat16": 312.0, "float32": 19.5}),
    ("L40S", {"bfloat16": 362.1, "float32": 91.6}),
    ("L4", {"bfloat16": 121.0, "float32": 30.3}),
    ("A10", {"bfloat16": 125.0, "float32": 31.2}),
    ("V100", {"bfloat16": None, "float32": 15.7}),
    ("T4", {"bfloat16": None, "float32": 8.1}),
    ("TPU v6", {"bfloat16": 918.0, "float32": None}),
    ("TPU v5 lite", {"bfloat16": 197.0, "float32": None}),
    ("TPU v5e", {"bfloat16": 197.0, "float32": None}),
    ("TPU v5", {"bfloat16": 459.0, "float32": None}),  # v5p
    ("TPU v4", {"bfloat16": 275.0, "float32": None}),
    ("TPU v3", {"bfloat16": 123.0, "float32": None}),
    ("TPU v2", {"bfloat16": 45.0, "float32": None}),
)

QUICK_CASES = [  # (model, input, batch, dtype, steps per dispatch)
    ("mlp", "28x28x1", 32, "float32", 1),
    ("mlp", "28x28x1", 32, "float32", 25),
    ("mlp", "28x28x1", 32, "bfloat16", 25),
    ("cnn", "32x32x3", 32, "float32", 0),
    ("cnn", "32x32x3", 32, "float32", 1),
    ("cnn_im2col", "32x32x3", 32, "float32", 1),
    ("cnn_im2col", "32x32x3", 32, "float32", 25),
    ("cnn_im2col", "32x32x3", 32, "bfloat16", 25),
    ("cnn", "28x28x1", 32, "float32", 1),
    ("cnn_im2col", "28x28x1", 32, "float32", 25),
    ("realnvp", None, 1024, "float32", 10),
    ("spline_flow", None, 1024, "float32", 10),
]
QUICK_SCALING_MODELS = ("mlp", "realnvp")
QUICK_NUM_DEVICES = (1, 2, 4, 8)


@dataclasses.dataclass(frozen=True)
class Case:
  model: str
  input_shape: tuple[int, ...] | None  # images HxWxC; None: 2-D points
  batch_size: int  # global
  dtype: str = "float32"
  steps_per_dispatch: int = 1  # 0: make_train_step without lax.scan
  num_devices: int = 1

  @property
  def name(self) -> str:
    shape = "x".join(map(str, self.input_shape)) if self.input_shape else "2-D points"
    return (f"{self.model} {shape} b{self.batch_size} {self.dtype} "
            f"k{self.steps_per_dispatch} d{self.num_devices}")


# ----------------------------------------------------------------- machine


def machine_info(jax) -> dict:
  cpu_model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu_model = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  dev = jax.devices()[0]
  import flax, jaxlib, optax  # pylint: disable=g-import-not-at-top,multiple-imports
  info = {
      "backend": jax.default_backend(),
      "device_kind": dev.device_kind,
      "num_devices": jax.device_count(),
      "num_processes": jax.process_count(),
      "cpu_model": cpu_model,
      "cpu_cores": os.cpu_count(),
      "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
      "hostname": platform.node(),
      "python": platform.python_version(),
      "jax": jax.__version__, "jaxlib": jaxlib.__version__,
      "flax": flax.__version__, "optax": optax.__version__,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
      "load_average_at_start": os.getloadavg(),
  }
  try:
    with open("/proc/meminfo") as f:
      info["memory_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
  except (OSError, ValueError, IndexError):
    pass
  return info


def machine_tag(info: dict) -> str:
  if info["backend"] == "cpu":
    what = f"{info['cpu_model']}-{info['cpu_cores_usable'] or info['cpu_cores']}cores"
  else:
    what = f"{info['device_kind']}-{info['num_devices']}dev"
  slug = re.sub(r"[^a-z0-9]+", "-", f"{info['backend']}-{what}".lower())
  return re.sub(r"-(r|tm)-", "-", slug).strip("-")


def nominal_peak(device_kind: str, dtype: str) -> float | None:
  """FLOP/s of one chip, or None when the chip (or dtype) is not in the table."""
  for key, peaks in NOMINAL_PEAKS_TFLOPS:
    if key.lower() in device_kind.lower():
      tflops = peaks.get(dtype)
      return tflops * 1e12 if tflops else None
  return None


# ----------------------------------------------------------------- matmul


class MatmulReference:
  """Square matmul FLOP/s in this process: the ceiling a train step is held to."""

  def __init__(self, jax, size: int):
    self.jax, self.size = jax, size
    jnp = jax.numpy
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
    self.jax.block_until_ready(out)
    return (time.perf_counter() - t0) / reps

  def window(self, dtype: str) -> float:
    """FLOP/s of one short window."""
    return self.flops / self._time(dtype, self.reps)

  def measure(self, dtype: str, repeats: int) -> dict:
    rates = [self.window(dtype) for _ in range(repeats)]
    return {"size": self.size, "dtype": dtype, "flops": self.flops,
            "median_flops_per_s": float(_median(rates)),
            "min_flops_per_s": float(min(rates)),
            "max_flops_per_s": float(max(rates))}


def _median(xs):
  xs = sorted(xs)
  n = len(xs)
  return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


# ----------------------------------------------------------------- the step


def _density_cfg(name: str):
  spec = importlib.util.spec_from_file_location(
      "density_configs", os.path.join(_HERE, "configs", "density_mle.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config().models[name]


def _classify_config(variant: str = "cnn"):
  spec = importlib.util.spec_from_file_location(
      "classify_configs", os.path.join(_HERE, "configs", "classify.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def build_problem(jax, case: Case, data_size: int | None = None):
  """(model, init_fn, loss_fn, tx, train_data) as the experiments build them."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from genmodels import density_mle, models  # pylint: disable=g-import-not-at-top
  from genmodels.models import classifiers  # pylint: disable=g-import-not-at-top
  from genmodels.training import objectives  # pylint: disable=g-import-not-at-top
  jnp = jax.numpy
  rng = np.random.default_rng(0)
  n = data_size or max(4096, 4 * case.batch_size)
  if case.model in CLASSIFIER_MODELS:
    kwargs = {"dtype": jnp.dtype(case.dtype)}
    name = case.model
    if case.model == "cnn_im2col":
      name, kwargs["conv_impl"] = "cnn", "im2col"
    model = classifiers.get_classifier(name, num_classes=10, **kwargs)
    shape = case.input_shape
    data = {"image": rng.integers(0, 256, (n, *shape), dtype=np.uint8),
            "label": rng.integers(0, 10, n).astype(np.int32)}
    sample = jnp.zeros((1, *shape), jnp.float32)
    init_fn = lambda k: model.init({"params": k, "dropout": k}, sample, train=False)
    return model, init_fn, objectives.classification_loss(model), optax.adam(5e-4), data
  if case.dtype != "float32":
    raise NotImplementedError("the density models compute in float32 only")
  cfg = _density_cfg(case.model)
  model = models.get_density_model(case.model, **cfg.model.to_dict())
  x = np.stack([rng.uniform(-180, 180, n), rng.uniform(-60, 85, n)], -1).astype(np.float32)
  init_fn = lambda k: model.init(k, jnp.asarray(x), method="log_prob")
  return (model, init_fn, objectives.density_loss(model),
          density_mle.make_optimizer(cfg), {"x": x})


def _cost(obj) -> dict:
  ca = obj.cost_analysis()
  if isinstance(ca, (list, tuple)):
    ca = ca[0] if ca else {}
  return dict(ca or {})


def _memory(compiled) -> dict:
  try:
    ma = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return {}
  if ma is None:
    return {}
  keys = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
          "alias_size_in_bytes", "generated_code_size_in_bytes", "peak_memory_in_bytes")
  return {k: int(getattr(ma, k)) for k in keys if hasattr(ma, k)}


def _device_peak_memory(jax) -> int | None:
  peaks = []
  for d in jax.local_devices():
    try:
      stats = d.memory_stats()
    except Exception:  # pylint: disable=broad-except
      stats = None
    if stats and "peak_bytes_in_use" in stats:
      peaks.append(int(stats["peak_bytes_in_use"]))
  return max(peaks) if peaks else None


class Step:
  """The engine's compiled step for one case, with its inputs on the mesh."""

  def __init__(self, jax, case: Case, data_size: int | None = None, problem=None):
    import numpy as np  # pylint: disable=g-import-not-at-top
    from genmodels.training import sharding, steps  # pylint: disable=g-import-not-at-top
    self.jax, self.case = jax, case
    model, init_fn, loss_fn, tx, train_data = problem or build_problem(jax, case, data_size)
    self.model = model
    # As loop.train does it.
    mesh = sharding.make_mesh(case.num_devices)
    repl = sharding.replicated(mesh)
    seed_key = jax.random.key(0)
    init_key, self.seed_key = jax.random.split(seed_key)
    state = steps.create_train_state(jax.jit(init_fn)(init_key), tx)
    self.state = sharding.put(state, repl)
    self.data = sharding.put(train_data, repl)
    n = len(next(iter(train_data.values())))
    k = case.steps_per_dispatch
    rng = np.random.default_rng(1)
    if k == 0:  # one plain train step per dispatch, on a fixed device batch
      fn = jax.jit(steps.make_train_step(loss_fn), donate_argnums=(0,))
      idx = rng.integers(0, n, case.batch_size).astype(np.int32)
      batch = sharding.put({key: v[idx] for key, v in train_data.items()},
                           sharding.batch_sharded(mesh))
      self.args = lambda s: (s, batch, self.seed_key)
      self.steps_per_call = 1
    else:
      fn = jax.jit(steps.make_multi_step(loss_fn), donate_argnums=(0,))
      idx = sharding.put_process_slice(
          rng.integers(0, n, (k, case.batch_size)).astype(np.int32),
          sharding.batch_sharded(mesh, leading_axes=1), axis=1)
      self.args = lambda s: (s, self.data, idx, self.seed_key)
      self.steps_per_call = k
    self.jitted = fn
    t0 = time.perf_counter()
    lowered = fn.lower(*self.args(self.state))
    self.compiled = lowered.compile()
    self.compile_seconds = time.perf_counter() - t0
    # XLA counts a while loop's body once: the cost is that of one train step.
    self.xla_flops_per_step = float(_cost(self.compiled).get("flops", float("nan")))
    self.memory = _memory(self.compiled)

  def run(self, calls: int):
    state = self.state
    for _ in range(calls):
      state, metrics = self.compiled(*self.args(state))
    self.jax.block_until_ready(state)
    self.state = state
    return metrics


def useful_flops_per_step(jax, case: Case) -> float:
  """The model's FLOPs per step as XLA counts them for lax.conv.

  For cnn_im2col this is the cost of the same step with lax.conv (the
  im2col matmuls also multiply the zero padding); from the lowered module, so
  no second compile.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  from genmodels.training import steps  # pylint: disable=g-import-not-at-top
  ref = dataclasses.replace(case, model="cnn" if case.model == "cnn_im2col" else case.model,
                            steps_per_dispatch=1, num_devices=1)
  _, init_fn, loss_fn, tx, data = build_problem(jax, ref, data_size=max(64, case.batch_size))
  state = jax.eval_shape(lambda: steps.create_train_state(init_fn(jax.random.key(0)), tx))
  idx = np.zeros((1, case.batch_size), np.int32)
  lowered = jax.jit(steps.make_multi_step(loss_fn)).lower(
      state, data, idx, jax.random.key(0))
  return float(_cost(lowered).get("flops", float("nan")))


def measure(jax, case: Case, matmul: MatmulReference, repeats: int,
            window_seconds: float, device_kind: str) -> dict:
  step = Step(jax, case)
  step.run(1)  # warm-up
  t0 = time.perf_counter()
  step.run(1)
  per_call = time.perf_counter() - t0
  calls = max(1, round(window_seconds / max(per_call, 1e-6)))
  step_times, ratios, mm_rates = [], [], []
  try:
    useful = useful_flops_per_step(jax, case)
  except Exception:  # pylint: disable=broad-except
    useful = step.xla_flops_per_step
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
  t_step = _median(step_times)
  achieved = useful / t_step
  peak = nominal_peak(device_kind, case.dtype) if jax.default_backend() != "cpu" else None
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
      "matmul_flops_per_second_median": _median(mm_rates),
      "fraction_of_matmul": _median(ratios),
      "fraction_of_matmul_ratio_of_medians": achieved / case.num_devices / _median(mm_rates),
      "nominal_peak_flops_per_second": peak,
      "fraction_of_nominal_peak": (achieved / case.num_devices / peak) if peak else None,
      "compiled_memory": step.memory,
      "device_peak_memory_bytes": _device_peak_memory(jax),
      "load_average": [load0, os.getloadavg()[0]],
  }
  return row, step


# ----------------------------------------------------------------- profile


_CONTAINERS = ("while", "call", "conditional", "command_buffer")


def _op_kind(name: str) -> str:
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


def profile(jax, step: Step, calls: int = 2) -> dict:
  """Time per train step by kind of XLA op, from a jax.profiler trace."""
  from jax.profiler import ProfileData  # pylint: disable=g-import-not-at-top
  tmp = tempfile.mkdtemp(prefix="genmodels_profile_")
  try:
    step.run(1)
    t0 = time.perf_counter()
    jax.profiler.start_trace(tmp)
    step.run(calls)
    jax.profiler.stop_trace()
    wall = (time.perf_counter() - t0) / (calls * step.steps_per_call)
    files = sorted(glob.glob(os.path.join(tmp, "**", "*.xplane.pb"), recursive=True))
    data = ProfileData.from_file(files[-1])
    kinds, ops = {}, {}
    nsteps = calls * step.steps_per_call
    for plane in data.planes:
      device_plane = plane.name.startswith("/device:")
      for line in plane.lines:
        if not (device_plane or line.name.startswith("tf_XLAEigen")):
          continue
        for ev in line.events:
          if (ev.name.startswith(("ThunkExecutor", "$") + _CONTAINERS)
              or " " in ev.name):  # host frames and loop containers (nested)
            continue
          ms = ev.duration_ns / 1e6 / nsteps
          kinds[_op_kind(ev.name)] = kinds.get(_op_kind(ev.name), 0.0) + ms
          ops[ev.name] = ops.get(ev.name, 0.0) + ms
    top = sorted(ops.items(), key=lambda kv: -kv[1])[:12]
    return {"case": step.case.name, "wall_ms_per_step_while_tracing": wall * 1e3,
            "op_ms_per_step_by_kind": dict(sorted(kinds.items(), key=lambda kv: -kv[1])),
            "op_ms_per_step_total": sum(kinds.values()),
            "top_ops_ms_per_step": dict(top),
            "note": ("op time summed over XLA's worker threads (CPU) or device "
                     "streams: it can exceed the wall time when ops run in parallel")}
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------- scaling


def measure_scaling(jax, models, batch_sizes, num_devices, matmul, repeats,
                    window_seconds, device_kind) -> list[dict]:
  """Weak scaling: batch per device fixed, global batch = per device x N."""
  rows = []
  available = jax.device_count()
  for model in models:
    per_device = batch_sizes[model]
    base = None
    for n in num_devices:
      if n > available:
        continue
      case = Case(model, (28, 28, 1) if model in CLASSIFIER_MODELS else None,
                  per_device * n, "float32",
                  25 if model in CLASSIFIER_MODELS else 10, n)
      row, _ = measure(jax, case, matmul, repeats, window_seconds, device_kind)
      if n == 1:
        base = row["examples_per_second"]
      row["per_device_batch"] = per_device
      row["scaling_efficiency"] = (row["examples_per_second"] / (n * base)
                                   if base else None)
      rows.append(row)
      print(f"  scaling {case.name}: {row['examples_per_second']:.0f} ex/s, "
            f"efficiency {row['scaling_efficiency']}", file=sys.stderr, flush=True)
  return rows


def scaling_in_subprocess(models, num_devices, n_sim, repeats, window_seconds) -> dict:
  """Scaling over simulated CPU devices (XLA_FLAGS must precede jax's start)."""
  out = tempfile.mktemp(suffix=".json", prefix="genmodels_scaling_")
  env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                                    f" --xla_force_host_platform_device_count={n_sim}"))
  cmd = [sys.executable, os.path.abspath(__file__), f"--scaling_worker={out}",
         f"--scaling_models={','.join(models)}",
         f"--num_devices={','.join(map(str, num_devices))}",
         f"--repeats={repeats}", f"--window_seconds={window_seconds}",
         "--noepoch", "--noprofile"]
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
  if proc.returncode:
    return {"error": proc.stderr[-2000:]}
  with open(out) as f:
    result = json.load(f)
  os.remove(out)
  return result


# ----------------------------------------------------------------- epoch


@contextlib.contextmanager
def _compilation_cache(jax):
  """Persists every compile made inside, so loop.train reuses our executable."""
  old = jax.config.jax_persistent_cache_min_compile_time_secs
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  try:
    yield
  finally:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", old)


def measure_epoch(jax, cache_dir: str, num_train: int, conv_impl: str,
                  repeats: int, window_seconds: float, runs: int = 2) -> dict:
  """One real Fashion-MNIST epoch through classification.train_and_evaluate.

  The epoch's time (the loop's ``train_seconds``: dispatches, index transfer,
  metric fetches, logging and the epoch's checkpoint) against the sum of its
  train steps (steady-state step time x steps). The compiled step is made
  first, with the loop's exact inputs, and written to JAX's compilation cache,
  so the loop's first dispatch loads it instead of compiling. The one-time
  costs of that first dispatch and the epoch's checkpoint are measured
  separately and reported beside the raw overhead.
  """
  from genmodels import classification  # pylint: disable=g-import-not-at-top
  from genmodels.models import classifiers  # pylint: disable=g-import-not-at-top
  from genmodels.training import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  from genmodels.training import objectives  # pylint: disable=g-import-not-at-top
  config = _classify_config("cnn")
  config.num_train, config.num_test, config.epochs = num_train, 1000, 1
  config.model_kwargs.conv_impl = conv_impl
  t0 = time.perf_counter()
  train, _ = classification.load_data(config)
  load_seconds = time.perf_counter() - t0
  steps_per_epoch = len(train.labels) // config.batch_size
  k = min(config.steps_per_dispatch, steps_per_epoch)
  if steps_per_epoch % k:
    raise ValueError(f"steps per epoch {steps_per_epoch} must be a multiple of "
                     f"steps_per_dispatch {k} for a single compiled step")
  model = classifiers.get_classifier(config.model, num_classes=train.num_classes,
                                     **config.model_kwargs.to_dict())
  sample = jax.numpy.zeros((1, *train.images.shape[1:]), jax.numpy.float32)
  problem = (model,
             lambda key: model.init({"params": key, "dropout": key}, sample, train=False),
             objectives.classification_loss(model, config.label_smoothing),
             classification.make_optimizer(config, steps_per_epoch),
             {"image": train.images, "label": train.labels})
  case = Case("cnn" if conv_impl == "xla" else "cnn_im2col", train.images.shape[1:],
              config.batch_size, "float32", k, 1)
  with _compilation_cache(jax):
    step = Step(jax, case, problem=problem)
  # What the loop pays once, at its first dispatch, when the executable is in
  # the cache: tracing and lowering its own jit of the step, loading the
  # executable, and the first call's set-up (e.g. the matmul library's plans).
  from genmodels.training import steps as steps_lib  # pylint: disable=g-import-not-at-top
  fresh = jax.jit(steps_lib.make_multi_step(problem[2]), donate_argnums=(0,))
  t = time.perf_counter()
  fresh.lower(*step.args(step.state)).compile()
  trace_and_load = time.perf_counter() - t
  t = time.perf_counter()
  step.run(1)
  first_call = time.perf_counter() - t
  t = time.perf_counter()
  step.run(1)
  calls = max(1, round(window_seconds / (time.perf_counter() - t)))

  def windows():
    out = []
    for _ in range(repeats):
      t = time.perf_counter()
      step.run(calls)
      out.append((time.perf_counter() - t) / (calls * k))
    return out

  times = windows()
  # A checkpoint save of this state, as the loop does once per epoch.
  ckdir = tempfile.mkdtemp(prefix="genmodels_ckpt_")
  try:
    ckpt = checkpoint_lib.Checkpointer(ckdir, 1)
    t = time.perf_counter()
    ckpt.save(1, step.state, force=True)
    ckpt_seconds = time.perf_counter() - t
    ckpt.close()
  finally:
    shutil.rmtree(ckdir, ignore_errors=True)

  epochs, recompiled, accuracy = [], False, None
  for _ in range(runs):
    workdir = tempfile.mkdtemp(prefix="genmodels_epoch_")
    try:
      with _compilation_cache(jax):
        before_run = set(os.listdir(cache_dir))
        results = classification.train_and_evaluate(config, workdir, progress=False)
        recompiled |= any(f.startswith("jit_multi_step")
                          for f in set(os.listdir(cache_dir)) - before_run)
    finally:
      shutil.rmtree(workdir, ignore_errors=True)
    epochs.append(float(results["train_seconds"]))
    accuracy = results["test_accuracy"]
  times += windows()  # steps timed before and after the epochs: same conditions
  step.state = None  # frees the device buffers
  t_step = _median(times)
  sum_steps = steps_per_epoch * t_step
  epoch = _median(epochs)
  one_time = trace_and_load + max(0.0, first_call - k * t_step)
  return {
      "dataset": config.dataset, "num_train": int(len(train.labels)),
      "batch_size": config.batch_size, "steps_per_epoch": steps_per_epoch,
      "steps_per_dispatch": k, "dispatches_per_epoch": steps_per_epoch // k,
      "conv_impl": conv_impl, "data_load_seconds": load_seconds,
      "step_seconds_median": t_step, "sum_of_train_steps_seconds": sum_steps,
      "epoch_seconds_runs": epochs, "epoch_seconds": epoch,
      "overhead_fraction": epoch / sum_steps - 1.0,
      "checkpoint_save_seconds": ckpt_seconds,
      "trace_lower_and_load_seconds": trace_and_load,
      "first_call_extra_seconds": first_call - k * t_step,
      "one_time_seconds": one_time,
      "overhead_fraction_per_epoch": (epoch - one_time) / sum_steps - 1.0,
      "overhead_fraction_per_epoch_without_checkpoint": (
          epoch - one_time - ckpt_seconds) / sum_steps - 1.0,
      "loop_reused_compiled_step": not recompiled,
      "test_accuracy_after_epoch": accuracy,
  }


# ----------------------------------------------------------------- report


def _fmt(x, spec=".3g", none="n/a"):
  if x is None or (isinstance(x, float) and not math.isfinite(x)):
    return none
  return format(x, spec)


def markdown(result: dict) -> str:
  m = result["machine"]
  lines = [f"# Train-step benchmark: {result['tag']}", "",
           f"`{result['command']}`", "",
           f"- backend **{m['backend']}**, device kind `{m['device_kind']}`, "
           f"{m['num_devices']} device(s); CPU: {m['cpu_model']}, "
           f"{m['cpu_cores_usable']} usable cores of {m['cpu_cores']}",
           f"- jax {m['jax']}, jaxlib {m['jaxlib']}, flax {m['flax']}, optax "
           f"{m['optax']}, Python {m['python']}; {m['date']}",
           f"- load average (1 min) at start {m['load_average_at_start'][0]:.1f}, "
           f"at end {result['load_average_at_end'][0]:.1f} "
           "(other jobs share this machine: each timed window is paired with a "
           "matmul window right after it, and the fraction is the median of the "
           "paired ratios)", ""]
  lines += ["## Matmul reference (same process)", "",
            "| size | dtype | median GFLOP/s | min | max |", "|---:|---|---:|---:|---:|"]
  for r in result["matmul"]:
    lines.append(f"| {r['size']} | {r['dtype']} | {r['median_flops_per_s'] / 1e9:.1f} | "
                 f"{r['min_flops_per_s'] / 1e9:.1f} | {r['max_flops_per_s'] / 1e9:.1f} |")
  lines += ["", "## Train steps", "",
            "k = train steps per dispatch (lax.scan); k0 = one `make_train_step` "
            "per dispatch on a fixed batch, no scan. MFLOP/step: the model's, as "
            "XLA counts it with lax.conv (for cnn_im2col too). % matmul: achieved "
            "FLOP/s over the same-process matmul of the same dtype.", "",
            "| model | input | batch | dtype | k | compile s | ms/step | steps/s | "
            "examples/s | MFLOP/step | GFLOP/s | % matmul | % peak | temp MB |",
            "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in result["cases"]:
    if "error" in r:
      lines.append(f"| {r['model']} | {r['input']} | {r['batch_size']} | {r['dtype']} | "
                   f"{r['steps_per_dispatch']} | {r['error']} |||||||||")
      continue
    shape = "x".join(map(str, r["input_shape"])) if r["input_shape"] else "2-D"
    peak = r["fraction_of_nominal_peak"]
    temp = r["compiled_memory"].get("temp_size_in_bytes")
    lines.append(
        f"| {r['model']} | {shape} | {r['batch_size']} | {r['dtype']} | "
        f"{r['steps_per_dispatch']} | {r['compile_seconds']:.1f} | "
        f"{r['step_seconds_median'] * 1e3:.2f} | {r['steps_per_second']:.1f} | "
        f"{r['examples_per_second']:,.0f} | {r['useful_flops_per_step'] / 1e6:,.1f} | "
        f"{r['achieved_flops_per_second'] / 1e9:.2f} | "
        f"{100 * r['fraction_of_matmul']:.1f}% | "
        f"{_fmt(peak and 100 * peak, '.1f')}{'%' if peak else ''} | "
        f"{_fmt(temp and temp / 2**20, '.1f')} |")
  if result.get("device_peak_memory_bytes") is not None:
    lines += ["", f"Device peak memory over the run: "
              f"{result['device_peak_memory_bytes'] / 2**30:.2f} GiB."]
  else:
    lines += ["", "Peak memory: this backend does not report device memory "
              "statistics; `temp MB` is the compiled program's scratch space "
              "(XLA memory analysis)."]
  scaling = result.get("scaling") or {}
  if scaling.get("rows"):
    lines += ["", "## Scaling (weak: batch per device fixed)", "",
              scaling.get("note", ""), "",
              "| model | devices | global batch | ms/step | examples/s | efficiency |",
              "|---|---:|---:|---:|---:|---:|"]
    for r in scaling["rows"]:
      lines.append(f"| {r['model']} | {r['num_devices']} | {r['batch_size']} | "
                   f"{r['step_seconds_median'] * 1e3:.2f} | {r['examples_per_second']:,.0f} | "
                   f"{_fmt(r['scaling_efficiency'], '.2f')} |")
  elif scaling.get("error") or scaling.get("note"):
    lines += ["", "## Scaling", "", scaling.get("note") or scaling.get("error", "")[:500]]
  for p in result.get("profiles", []):
    lines += ["", f"## Where the time goes: {p['case']}", "",
              f"Wall time per step while tracing: {p['wall_ms_per_step_while_tracing']:.1f} ms; "
              f"op time summed over worker threads: {p['op_ms_per_step_total']:.1f} ms.", "",
              "| kind of op | ms/step |", "|---|---:|"]
    for k, v in p["op_ms_per_step_by_kind"].items():
      lines.append(f"| {k} | {v:.2f} |")
  e = result.get("epoch")
  if e and "error" not in e:
    lines += ["", "## One epoch end to end vs the sum of its train steps", "",
              f"Book CNN (conv_impl={e['conv_impl']}) on {e['dataset']}, "
              f"{e['num_train']} images, batch {e['batch_size']}, "
              f"{e['steps_per_dispatch']} steps per dispatch, through "
              "`classification.train_and_evaluate` (compiled step reused from the "
              f"compilation cache: {e['loop_reused_compiled_step']}).", "",
              "| steps | dispatches | step ms | sum of steps s | epoch s (runs) | "
              "overhead | one-time s | per-epoch overhead | checkpoint s | "
              "per-epoch overhead without checkpoint |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
              f"| {e['steps_per_epoch']} | {e['dispatches_per_epoch']} | "
              f"{e['step_seconds_median'] * 1e3:.1f} | "
              f"{e['sum_of_train_steps_seconds']:.2f} | {e['epoch_seconds']:.2f} "
              f"({', '.join(f'{x:.2f}' for x in e['epoch_seconds_runs'])}) | "
              f"{100 * e['overhead_fraction']:+.1f}% | {e['one_time_seconds']:.2f} | "
              f"{100 * e['overhead_fraction_per_epoch']:+.1f}% | "
              f"{e['checkpoint_save_seconds']:.2f} | "
              f"{100 * e['overhead_fraction_per_epoch_without_checkpoint']:+.1f}% |",
              "", "Overhead = epoch / sum of steps - 1, with the epoch time the loop's "
              "own `train_seconds` (median of the runs). One-time: what the loop's "
              "first dispatch pays once per run even with the executable cached "
              f"(tracing and lowering the step: {e['trace_lower_and_load_seconds']:.2f} s; "
              f"the first call's set-up: {e['first_call_extra_seconds']:.2f} s); "
              "per-epoch overhead removes it. What remains is the per-dispatch host "
              "work (indices out, metrics back, logging), the epoch's checkpoint, "
              "and noise from other jobs on the machine."]
  elif e:
    lines += ["", "## Epoch", "", f"failed: {e['error'][:500]}"]
  lines += ["", "## Notes", ""] + [f"- {n}" for n in result.get("notes", [])]
  return "\n".join(lines) + "\n"


# ----------------------------------------------------------------- convergence


def measure_convergence(names, target_kl: float, eval_every: int) -> list[dict]:
  """Trains each density model as density_mle does; times the held-out KL."""
  from genmodels import density_mle  # pylint: disable=g-import-not-at-top
  from genmodels import probability  # pylint: disable=g-import-not-at-top
  from genmodels.data import world_map  # pylint: disable=g-import-not-at-top
  data = world_map.load(seed=0)
  entropy = world_map.entropy()
  rows = []
  for name in names:
    cfg = _density_cfg(name)
    cfg.eval_every = eval_every
    curve = []

    def on_eval(step, results, seconds, curve=curve):
      curve.append({"step": step, "train_seconds": seconds, **{
          f"{split}_kl": probability.kl_to_truth(float(m["nll"]), entropy)
          for split, m in results.items()}})
      print(f"  {name} step {step}: {seconds:.1f} s, validation KL "
            f"{curve[-1]['validation_kl']:.4f}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as workdir:
      row, _, result = density_mle.fit_density(name, cfg, data, workdir, seed=0,
                                               progress=False, on_eval=on_eval)
    reached = next((c for c in curve if c["validation_kl"] <= target_kl), None)
    rows.append({
        "model": name, "num_params": row["num_params"], "num_steps": int(cfg.num_steps),
        "batch_size": int(cfg.batch_size), "steps_per_dispatch": int(cfg.steps_per_dispatch),
        "train_seconds": result.train_seconds,
        "steps_per_second": cfg.num_steps / result.train_seconds,
        "steady_steps_per_second": (  # From the first evaluation on: no compile.
            (curve[-1]["step"] - curve[0]["step"])
            / (curve[-1]["train_seconds"] - curve[0]["train_seconds"])
            if len(curve) > 1 else None),
        "target_kl": target_kl,
        "step_to_target": reached and reached["step"],
        "seconds_to_target": reached and reached["train_seconds"],
        "final_test_kl": row["kl_to_truth"], "final_land_precision": row["land_precision"],
        "curve": curve})
  return rows


def convergence_markdown(result: dict) -> str:
  m = result["machine"]
  lines = [f"# Density flows: time to a held-out KL of {result['target_kl']} nats", "",
           f"`{result['command']}`", "",
           f"- {m['backend']} ({m['device_kind']}), CPU {m['cpu_model']}, "
           f"{m['cpu_cores_usable']} usable cores; jax {m['jax']}; {m['date']}",
           f"- load average (1 min) at start {m['load_average_at_start'][0]:.1f}, "
           f"at end {result['load_average_at_end'][0]:.1f}",
           "- default `experiments/configs/density_mle.py`, 100,000 training points, "
           "seed 0; KL = held-out NLL - true entropy, on the 10,000 validation "
           "points for the curve and the 100,000 test points at the end; seconds "
           "exclude the evaluations (compilation included)", "",
           "| model | params | batch | steps | steps/s (all) | steps/s (steady) | "
           f"step at KL <= {result['target_kl']} | seconds to it | final test KL | "
           "land precision |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in result["rows"]:
    lines.append(
        f"| {r['model']} | {r['num_params']:,} | {r['batch_size']} | {r['num_steps']} | "
        f"{r['steps_per_second']:.1f} | {_fmt(r['steady_steps_per_second'], '.1f')} | "
        f"{_fmt(r['step_to_target'], 'd', 'not reached')} | "
        f"{_fmt(r['seconds_to_target'], '.1f', 'not reached')} | "
        f"{r['final_test_kl']:.4f} | {r['final_land_precision']:.3f} |")
  lines += ["", "Validation KL along the way:", "",
            "| model | " + " | ".join(f"step {c['step']}" for c in result["rows"][0]["curve"])
            + " |", "|---|" + "---:|" * len(result["rows"][0]["curve"])]
  for r in result["rows"]:
    lines.append(f"| {r['model']} | " + " | ".join(
        f"{c['validation_kl']:.3f} ({c['train_seconds']:.0f} s)" for c in r["curve"]) + " |")
  return "\n".join(lines) + "\n"


def _run_convergence(jax, names):
  info = machine_info(jax)
  tag = (_TAG.value or machine_tag(info)) + "-convergence"
  rows = measure_convergence(names, _CONVERGENCE_KL.value, _CONVERGENCE_EVAL_EVERY.value)
  result = {"tag": tag, "machine": info, "target_kl": _CONVERGENCE_KL.value,
            "command": "python experiments/benchmark.py " + " ".join(sys.argv[1:]),
            "rows": rows, "load_average_at_end": os.getloadavg()}
  from genmodels.training import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  os.makedirs(_OUT.value, exist_ok=True)
  path = os.path.join(_OUT.value, f"{tag}.json")
  with open(path, "w") as f:
    json.dump(metrics_lib.to_python(result), f, indent=2)
  text = convergence_markdown(result)
  with open(os.path.join(_OUT.value, f"{tag}.md"), "w") as f:
    f.write(text)
  print(text)
  print(f"wrote {path} and .md", file=sys.stderr)


# ----------------------------------------------------------------- main


def _cases(quick: bool) -> list[Case]:
  if quick:
    return [Case(m, tuple(map(int, s.split("x"))) if s else None, b, d, k)
            for m, s, b, d, k in QUICK_CASES]
  cases = []
  for model in _MODELS.value:
    if model not in CLASSIFIER_MODELS + DENSITY_MODELS:
      raise app.UsageError(f"unknown model {model!r}; valid: "
                           f"{', '.join(CLASSIFIER_MODELS + DENSITY_MODELS)}")
    classifier = model in CLASSIFIER_MODELS
    shapes = ([tuple(map(int, s.split("x"))) for s in _IMAGE_SHAPES.value]
              if classifier else [None])
    batches = _BATCH_SIZES.value if classifier else _DENSITY_BATCH_SIZES.value
    dtypes = _DTYPES.value if classifier else ["float32"]
    for shape in shapes:
      for b in batches:
        for d in dtypes:
          for k in _STEPS_PER_DISPATCH.value:
            cases.append(Case(model, shape, int(b), d, int(k)))
  return cases


def _scaling_worker(path: str):
  import jax  # pylint: disable=g-import-not-at-top
  matmul = MatmulReference(jax, _MATMUL_SIZE.value or 2048)
  batches = {m: (32 if m in CLASSIFIER_MODELS else 1024) for m in _SCALING_MODELS.value}
  rows = measure_scaling(jax, _SCALING_MODELS.value, batches,
                         [int(n) for n in _NUM_DEVICES.value], matmul, _REPEATS.value,
                         _WINDOW_SECONDS.value, jax.devices()[0].device_kind)
  with open(path, "w") as f:
    json.dump({"rows": rows, "device_count": jax.device_count()}, f)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  if _SCALING_WORKER.value:
    return _scaling_worker(_SCALING_WORKER.value)
  import jax  # pylint: disable=g-import-not-at-top
  if _CONVERGENCE.value:
    unknown = sorted(set(_CONVERGENCE.value) - set(DENSITY_MODELS))
    if unknown:
      raise app.UsageError(f"unknown --convergence model(s) {unknown}; valid: "
                           f"{', '.join(DENSITY_MODELS)}")
    return _run_convergence(jax, _CONVERGENCE.value)
  cache_dir = tempfile.mkdtemp(prefix="genmodels_jax_cache_")
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1e9)  # off until the epoch
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  started = time.perf_counter()
  quick = _QUICK.value
  repeats = 5 if quick and not flags.FLAGS["repeats"].present else _REPEATS.value
  window = _WINDOW_SECONDS.value
  info = machine_info(jax)
  tag = _TAG.value or machine_tag(info)
  backend = info["backend"]
  notes = []
  size = _MATMUL_SIZE.value or (2048 if backend == "cpu" else 8192)
  print(f"benchmark on {backend} ({info['device_kind']}, {info['num_devices']} "
        f"device(s)); results -> {_OUT.value}/{tag}.json", file=sys.stderr, flush=True)
  big = MatmulReference(jax, size)
  matmul_rows = [big.measure(d, repeats) for d in ("float32", "bfloat16")]
  paired = big
  notes.append(f"Each timed window is followed by a window of {big.reps} {size}^2 "
               "matmul(s) of the case's dtype; % matmul is the median of the "
               "paired ratios.")
  for r in matmul_rows:
    print(f"  matmul {r['size']} {r['dtype']}: {r['median_flops_per_s'] / 1e9:.1f} "
          "GFLOP/s", file=sys.stderr, flush=True)

  cases_out, profiles = [], []
  for case in _cases(quick):
    try:
      row, step = measure(jax, case, paired, repeats, window, info["device_kind"])
    except Exception as e:  # pylint: disable=broad-except
      row, step = {**dataclasses.asdict(case), "name": case.name,
                   "input": "x".join(map(str, case.input_shape or ())) or "2-D",
                   "error": f"{type(e).__name__}: {str(e)[:200]}"}, None
    cases_out.append(row)
    if "error" in row:
      print(f"  {case.name}: {row['error']}", file=sys.stderr, flush=True)
    else:
      print(f"  {case.name}: compile {row['compile_seconds']:.1f} s, "
            f"{row['step_seconds_median'] * 1e3:.2f} ms/step, "
            f"{row['examples_per_second']:,.0f} ex/s, "
            f"{row['achieved_flops_per_second'] / 1e9:.2f} GFLOP/s = "
            f"{100 * row['fraction_of_matmul']:.1f}% of matmul", file=sys.stderr, flush=True)
    if (_PROFILE.value and step is not None and case.input_shape == (32, 32, 3)
        and case.batch_size == 32 and case.dtype == "float32"
        and ((case.model == "cnn" and case.steps_per_dispatch in (0, 1))
             or (case.model == "cnn_im2col" and case.steps_per_dispatch == 25))):
      try:
        profiles.append(profile(jax, step, calls=1 if case.steps_per_dispatch else 3))
      except Exception as e:  # pylint: disable=broad-except
        profiles.append({"case": case.name, "error": f"{type(e).__name__}: {e}"})
        profiles[-1].update(op_ms_per_step_by_kind={}, op_ms_per_step_total=float("nan"),
                            wall_ms_per_step_while_tracing=float("nan"))
    del step

  # Scaling from 1 to N devices.
  models = QUICK_SCALING_MODELS if quick else tuple(_SCALING_MODELS.value)
  num_devices = QUICK_NUM_DEVICES if quick else tuple(int(n) for n in _NUM_DEVICES.value)
  if jax.device_count() > 1:
    batches = {m: (32 if m in CLASSIFIER_MODELS else 1024) for m in models}
    scaling = {"rows": measure_scaling(jax, models, batches, num_devices, paired,
                                       repeats, window, info["device_kind"]),
               "note": f"{jax.device_count()} {backend} devices in this process."}
    if backend == "cpu":
      scaling["note"] += (" Simulated CPU devices share the same cores: the "
                          "efficiency says nothing about real multi-device scaling.")
  elif backend == "cpu" and _CPU_SCALING_DEVICES.value > 1:
    print("  scaling over simulated CPU devices (subprocess)...", file=sys.stderr, flush=True)
    scaling = scaling_in_subprocess(models, num_devices, _CPU_SCALING_DEVICES.value,
                                    repeats, window)
    scaling["note"] = (
        f"{_CPU_SCALING_DEVICES.value} simulated CPU devices "
        "(--xla_force_host_platform_device_count) in a subprocess. They share the "
        f"same {info['cpu_cores_usable']} cores, so N devices do N times the work "
        "on the same hardware: efficiency ~1/N is expected and says nothing about "
        "real multi-device scaling. It shows the sharded step runs and what the "
        "partitioning costs. Run on a multi-GPU/TPU host for real numbers.")
  else:
    scaling = {"note": "one device: no scaling measurement"}

  epoch = None
  if _EPOCH.value:
    print("  one Fashion-MNIST epoch end to end...", file=sys.stderr, flush=True)
    try:
      epoch = measure_epoch(jax, cache_dir, _EPOCH_NUM_TRAIN.value,
                            _EPOCH_CONV_IMPL.value, repeats, window)
      print(f"  epoch {epoch['epoch_seconds']:.2f} s vs sum of steps "
            f"{epoch['sum_of_train_steps_seconds']:.2f} s: "
            f"{100 * epoch['overhead_fraction']:+.1f}%", file=sys.stderr, flush=True)
    except Exception as e:  # pylint: disable=broad-except
      epoch = {"error": f"{type(e).__name__}: {str(e)[:500]}"}
      print(f"  epoch failed: {epoch['error']}", file=sys.stderr, flush=True)

  if backend == "cpu":
    notes.append("No nominal peak for CPUs: the fraction of the same-process "
                 "matmul is the measure.")
  else:
    found = nominal_peak(info["device_kind"], "bfloat16") or nominal_peak(
        info["device_kind"], "float32")
    if not found:
      notes.append(f"device kind {info['device_kind']!r} is not in NOMINAL_PEAKS_TFLOPS")
  notes.append("XLA's cost analysis counts a lax.scan (while loop) body once, so "
               "the FLOPs of a multi-step program are those of one train step.")
  result = {
      "tag": tag, "machine": info,
      "command": "python experiments/benchmark.py " + " ".join(sys.argv[1:]),
      "quick": quick, "repeats": repeats, "window_seconds": window,
      "matmul": matmul_rows, "cases": cases_out, "profiles": profiles,
      "scaling": scaling, "epoch": epoch,
      "device_peak_memory_bytes": _device_peak_memory(jax),
      "load_average_at_end": os.getloadavg(),
      "total_seconds": time.perf_counter() - started, "notes": notes,
  }
  from genmodels.training import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  os.makedirs(_OUT.value, exist_ok=True)
  path = os.path.join(_OUT.value, f"{tag}.json")
  with open(path, "w") as f:
    json.dump(metrics_lib.to_python(result), f, indent=2)
  with open(os.path.join(_OUT.value, f"{tag}.md"), "w") as f:
    f.write(markdown(result))
  shutil.rmtree(cache_dir, ignore_errors=True)
  print(markdown(result))
  print(f"wrote {path} and .md in {result['total_seconds']:.0f} s", file=sys.stderr)


if __name__ == "__main__":
  app.run(main)
