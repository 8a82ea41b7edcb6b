"""One real Fashion-MNIST epoch, end to end, against the sum of its train steps."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time

import jax

from genmodels.errors import UsageError
from genmodels import classify
from genmodels.classify import config as classify_config
from genmodels.training import checkpoint as checkpoint_lib
from genmodels.training import experiment

from . import harness


@contextlib.contextmanager
def compilation_cache():
  """Persists every compile made inside, so the loop reuses our executable."""
  old = jax.config.jax_persistent_cache_min_compile_time_secs
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  try:
    yield
  finally:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", old)


def measure_epoch(cache_dir: str, num_train: int, conv_impl: str, repeats: int,
                  window_seconds: float, runs: int = 2) -> dict:
  """One epoch of classify's CNN config through ``experiment.run``, as classify.py runs it.

  The epoch's time (the loop's ``train_seconds``: dispatches, index transfer,
  metric fetches, logging and the epoch's checkpoint) against the sum of its
  train steps (steady-state step time x steps). The compiled step is made
  first from the same task (``experiment.setup``), with the loop's inputs, and
  written to JAX's compilation cache, so the loop's first dispatch loads it
  instead of compiling. The one-time costs of that first dispatch and the
  epoch's checkpoint are measured separately and reported beside the overhead.
  """
  config = classify_config.get_config("cnn")
  config.num_train, config.num_test, config.train.epochs = num_train, 1000, 1
  config.model_kwargs.conv_impl = conv_impl
  classify.resolve(config)
  experiment.validate(classify, config)
  options = experiment.Options(progress=False, figures=False)
  t0 = time.perf_counter()
  data = classify.load_data(config)
  load_seconds = time.perf_counter() - t0
  train = data[0]
  batch = config.train.batch_size
  steps_per_epoch = len(train.labels) // batch
  k = min(config.train.steps_per_dispatch, steps_per_epoch)
  if steps_per_epoch % k:
    raise UsageError(f"steps per epoch {steps_per_epoch} must be a multiple of "
                     f"steps_per_dispatch {k} for a single compiled step")
  task = classify.make_task(config, data, options)
  with compilation_cache():
    step = harness.Step(task, config.seed, k, num_devices=None, name="epoch")
  # What the loop pays once, at its first dispatch, when the executable is in
  # the cache: tracing and lowering its own jit of the step, loading the
  # executable, and the first call's set-up (e.g. the matmul library's plans).
  fresh = experiment.setup(task, config.seed, options)
  t = time.perf_counter()
  fresh.multi_step.lower(*step.args(step.state)).compile()
  trace_and_load = time.perf_counter() - t
  del fresh
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
      with compilation_cache():
        before_run = set(os.listdir(cache_dir))
        results = experiment.run(classify, config, workdir, options)
        recompiled |= any(f.startswith("jit_multi_step")
                          for f in set(os.listdir(cache_dir)) - before_run)
    finally:
      shutil.rmtree(workdir, ignore_errors=True)
    epochs.append(float(results["train_seconds"]))
    accuracy = results["test_accuracy"]
  times += windows()  # steps timed before and after the epochs: same conditions
  step.state = None  # frees the device buffers
  t_step = harness.median(times)
  sum_steps = steps_per_epoch * t_step
  epoch = harness.median(epochs)
  one_time = trace_and_load + max(0.0, first_call - k * t_step)
  return {
      "dataset": config.dataset, "num_train": int(len(train.labels)),
      "batch_size": batch, "steps_per_epoch": steps_per_epoch,
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
