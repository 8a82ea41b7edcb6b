"""Runs that survive: SIGKILL mid-run and resume, corrupt checkpoints, re-runs.

The entry-point test kills ``experiments/density_mle.py`` with SIGKILL mid-run,
starts the same command again and asserts it finishes with bitwise the same
train state, parameters, metrics and results as a run never interrupted. The
engine tests corrupt the newest checkpoint in the ways a disk or a killed copy
can, and assert the run falls back to the previous one with a warning and still
ends where the uninterrupted run ends.
"""

import atexit
import glob
import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from genmodels.density import trained as density_trained
from genmodels.training import checkpoint as checkpoint_lib
from genmodels.training import loop
from genmodels.training import metrics as metrics_lib
from genmodels.training import preemption
from genmodels.training import steps as steps_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL, NUM_STEPS, EVERY = "gmm", 100, 10


def _env(cache_dir):
  # A compilation cache shared by a scenario's processes: the later runs compile
  # nothing (the executables are the same either way).
  return dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache_dir),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def _steps(ckpt_dir):
  return sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit()) if os.path.isdir(ckpt_dir) else []


def _digest(ckpt_dir, step):
  with open(os.path.join(ckpt_dir, str(step), "_CHECKPOINT_METADATA")) as f:
    return json.load(f)["custom_metadata"][checkpoint_lib.DIGEST_KEY]


def _without_timing(row):
  return {k: v for k, v in row.items() if "seconds" not in k and k != "run"}


def _assert_same_params(a, b):
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    assert x.tobytes() == y.tobytes()  # bitwise, NaN patterns included


# ----------------------------------------------------------- engine-level

class _MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(1)(nn.tanh(nn.Dense(32)(x)))[:, 0]


_model = _MLP()


def _init(key):
  return _model.init(key, jnp.zeros((1, 16)))


def _loss(variables, batch, rng, train):
  del train
  pred = _model.apply(variables, batch["x"])
  pred = pred + 0.01 * jax.random.normal(rng, pred.shape)  # keys from (seed, step)
  loss = jnp.mean((pred - batch["y"]) ** 2)
  return loss, ({"mse": loss}, {})


def _eval(variables, batch):
  return {"mse": (_model.apply(variables, batch["x"]) - batch["y"]) ** 2}


def _data(n=256, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, 16)).astype(np.float32)
  return {"x": x, "y": np.sin(x.sum(1)).astype(np.float32)}


def _train(workdir, num_steps=30, data=None):
  data = _data() if data is None else data
  config = loop.LoopConfig(num_steps=num_steps, batch_size=16, seed=3, log_every=10,
                           checkpoint_every=10, steps_per_dispatch=2, progress=False)
  return loop.train(init_fn=_init, loss_fn=_loss, tx=optax.adam(1e-2), train_data=data,
                    config=config, workdir=str(workdir), eval_fn=_eval,
                    eval_data={"test": _data(64, seed=1)})


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """An uninterrupted engine run of 30 steps: (workdir, result)."""
  workdir = tmp_path_factory.mktemp("engine") / "run"
  return workdir, _train(workdir)


def _flip_byte_in_biggest_array_file(step_dir):
  """Silent corruption: one bit of array data, which Orbax restores unnoticed."""
  files = [p for p in glob.glob(f"{step_dir}/**/d/*", recursive=True) if os.path.isfile(p)]
  path = max(files, key=os.path.getsize)
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0x10
  open(path, "wb").write(bytes(data))


def _truncate_all(step_dir, pattern="**/*"):
  for p in glob.glob(f"{step_dir}/{pattern}", recursive=True):
    if os.path.isfile(p):
      with open(p, "r+b") as f:
        f.truncate(os.path.getsize(p) // 2)


CORRUPTIONS = {
    "bit_flip_in_array_data": _flip_byte_in_biggest_array_file,
    "truncated_files": _truncate_all,
    "truncated_metadata": lambda d: _truncate_all(d, "**/_*METADATA"),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupt_newest_checkpoint_falls_back_with_a_warning(
    finished, tmp_path, corruption, caplog):
  ref_dir, ref = finished
  workdir = tmp_path / "run"
  shutil.copytree(ref_dir, workdir)
  ckpt_dir = workdir / "checkpoints"
  assert _steps(ckpt_dir) == [10, 20, 30]
  CORRUPTIONS[corruption](ckpt_dir / "30")

  with caplog.at_level(logging.WARNING):
    result = _train(workdir)
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any("checkpoint at step 30" in w and "falling back" in w for w in warnings), warnings
  assert result.resumed_from == 20
  _assert_same_params(result.state.params, ref.state.params)
  assert [_without_timing(r) for r in result.history] == [
      _without_timing(r) for r in ref.history]
  # The bad checkpoint was replaced by a good one: the next start restores it.
  assert _digest(ckpt_dir, 30) == _digest(ref_dir / "checkpoints", 30)
  ckpt = checkpoint_lib.Checkpointer(str(ckpt_dir), 10)
  abstract = steps_lib.create_train_state(_init(jax.random.key(0)), optax.adam(1e-2))
  step, state = ckpt.restore_latest(abstract)
  ckpt.close()
  assert step == 30
  _assert_same_params(state.params, ref.state.params)


def test_all_checkpoints_corrupt_starts_over(finished, tmp_path):
  ref_dir, ref = finished
  workdir = tmp_path / "run"
  shutil.copytree(ref_dir, workdir)
  for step in (10, 20, 30):
    _flip_byte_in_biggest_array_file(workdir / "checkpoints" / str(step))
  result = _train(workdir)
  assert result.resumed_from == 0
  _assert_same_params(result.state.params, ref.state.params)


def test_rerunning_a_finished_run_changes_nothing(finished, tmp_path):
  """What the density ladder does to models already trained when it is re-run."""
  ref_dir, ref = finished
  workdir = tmp_path / "run"
  shutil.copytree(ref_dir, workdir)
  before = (workdir / "metrics.jsonl").read_text()
  result = _train(workdir)
  assert result.resumed_from == 30
  _assert_same_params(result.state.params, ref.state.params)
  # The final evaluation runs again and replaces its record instead of adding one.
  assert (workdir / "metrics.jsonl").read_text() == before
  assert result.history == metrics_lib.read_metrics(str(workdir / "metrics.jsonl"))
  assert [(r["step"], r["split"]) for r in result.history] == [
      (10, "train"), (20, "train"), (30, "train"), (30, "test")]


def test_preemption_request_stops_at_a_step_boundary_then_resumes_exactly(
    finished, tmp_path):
  """SIGINT/SIGTERM as the loop sees them: a checkpoint at the step, then resume."""
  ref_dir, ref = finished
  workdir = tmp_path / "run"
  with preemption.handle_signals():
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: no KeyboardInterrupt, a request
    assert preemption.requested() == signal.SIGINT
    with pytest.raises(preemption.Preempted) as info:
      _train(workdir)
  assert info.value.step == 2  # the first dispatch: 2 steps
  assert info.value.signum == signal.SIGINT
  assert _steps(workdir / "checkpoints") == [2]
  assert preemption.requested() is None  # handlers restored, request cleared
  result = _train(workdir)
  assert result.resumed_from == 2
  _assert_same_params(result.state.params, ref.state.params)
  # The train record of the window cut by the stop averages all its steps.
  assert [_without_timing(r) for r in result.history] == [
      _without_timing(r) for r in ref.history]


# ------------------------------------------- entry points, killed with SIGKILL
# Last in the file: the density scenario's subprocesses start at collection
# (conftest's start_early) and run while the engine tests above do.

class KillScenario:
  """An uninterrupted run; the same command killed with SIGKILL mid-run; again.

  ``kill_after``: the kill comes as soon as a checkpoint at or past that step
  exists (the run is then training, logging or saving the next one).
  """

  def __init__(self, script, args, ckpt_subdir, kill_after, final_step,
               sig=signal.SIGKILL):
    self.script, self.args, self.ckpt_subdir = script, args, ckpt_subdir
    self.kill_after, self.final_step, self.sig = kill_after, final_step, sig
    self.tmp = pathlib.Path(tempfile.mkdtemp(prefix="genmodels_resume_"))
    self.ref_dir, self.run_dir = self.tmp / "uninterrupted", self.tmp / "killed"
    self.procs, self.out, self.stopped = [], {}, False
    self.thread = threading.Thread(target=self._run, daemon=True)
    self.thread.start()
    atexit.register(self.stop)  # Even if the test never runs (-x, -k, Ctrl-C).

  def _start(self, workdir, log):
    if self.stopped:
      raise RuntimeError("stopped")
    with open(self.tmp / log, "w") as f:
      proc = subprocess.Popen(
          [sys.executable, os.path.join(REPO, "experiments", self.script),
           f"--workdir={workdir}", *self.args], cwd=REPO, env=_env(self.tmp / "jax_cache"),
          stdout=subprocess.DEVNULL, stderr=f)
    self.procs.append(proc)
    return proc

  def _run(self):
    try:
      # One after the other: the later runs find the compiled code in the cache.
      self.out["ref_status"] = self._start(self.ref_dir, "ref.log").wait(timeout=600)
      run = self._start(self.run_dir, "run.log")
      ckpt_dir = self.run_dir / self.ckpt_subdir
      deadline = time.monotonic() + 600
      while not [s for s in _steps(ckpt_dir) if s >= self.kill_after]:
        assert run.poll() is None, "the run ended before the kill"
        assert time.monotonic() < deadline, "no checkpoint to kill after in time"
        time.sleep(0.01)
      os.kill(run.pid, self.sig)
      self.out["killed_status"] = run.wait(timeout=300)
      self.out["killed_at"] = _steps(ckpt_dir)
      self.out["results_after_kill"] = (self.run_dir / "results.json").exists()
      self.out["restart_status"] = self._start(self.run_dir, "restart.log").wait(timeout=600)
    except BaseException:  # pylint: disable=broad-except
      self.out["error"] = traceback.format_exc()

  def finish(self):
    """Waits for the three runs and checks what the killed run went through."""
    self.thread.join(timeout=900)
    logs = {n: (self.tmp / f"{n}.log").read_text() for n in ("ref", "run", "restart")
            if (self.tmp / f"{n}.log").exists()}
    assert "error" not in self.out, (self.out["error"], logs)
    assert self.out["ref_status"] == 0, logs["ref"]
    if self.sig == signal.SIGKILL:
      assert self.out["killed_status"] == -signal.SIGKILL
    else:  # stopped at a step boundary with a checkpoint and a one-line message
      assert self.out["killed_status"] == 128 + self.sig, logs["run"]
      lines = [l for l in logs["run"].splitlines() if l.strip()]
      # One line of its own, after the ladder's "== model" headers.
      assert all(l.startswith("== ") for l in lines[:-1]), logs["run"]
      assert lines[-1].startswith("stopped: stopped by"), logs["run"]
      step = max(self.out["killed_at"])
      assert f"run the same command again to resume from step {step}" in lines[-1]
    assert max(self.out["killed_at"]) < self.final_step  # killed mid-run...
    assert not self.out["results_after_kill"]
    assert self.out["restart_status"] == 0, logs["restart"]  # ... and resumed
    assert not any("Traceback" in log for log in logs.values()), logs
    ckpt_dir, ref_ckpt = self.run_dir / self.ckpt_subdir, self.ref_dir / self.ckpt_subdir
    assert not glob.glob(str(ckpt_dir / "*tmp*")), "a killed save's leftovers remain"
    # The whole train state (params, optimizer and BatchNorm state): the
    # SHA-256 of its arrays, recorded with the final checkpoint.
    assert _digest(ckpt_dir, self.final_step) == _digest(ref_ckpt, self.final_step)
    got = metrics_lib.read_metrics(str(ckpt_dir.parent / "metrics.jsonl"))
    want = metrics_lib.read_metrics(str(ref_ckpt.parent / "metrics.jsonl"))
    assert want and [_without_timing(r) for r in got] == [_without_timing(r) for r in want]
    results = [json.loads((d / "results.json").read_text())
               for d in (self.run_dir, self.ref_dir)]
    return results[0], results[1], want

  def stop(self):
    self.stopped = True
    for proc in self.procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
    shutil.rmtree(self.tmp, ignore_errors=True)


_DENSITY = {}


def _density_args(num_steps=NUM_STEPS, model=MODEL):
  return [f"--model={model}", "--config=genmodels/density/config.py:smoke",
          "--progress=false", "--figures=false",
          f"--config.models.{model}.train.num_steps={num_steps}",
          f"--config.models.{model}.train.checkpoint_every={EVERY}",
          f"--config.models.{model}.train.log_every={EVERY}",
          f"--config.models.{model}.train.steps_per_dispatch=1"]


def _density_scenario(sig=signal.SIGKILL, model=MODEL):
  if (sig, model) not in _DENSITY:
    _DENSITY[sig, model] = KillScenario(
        "density_mle.py", _density_args(model=model), f"models/{model}/checkpoints",
        kill_after=3 * EVERY, final_step=NUM_STEPS, sig=sig)
  return _DENSITY[sig, model]


def start_early(items):
  """conftest hook: the subprocesses start at collection, overlapping other tests."""
  if any(item.name.startswith("test_density_mle_stopped") for item in items):
    _density_scenario()


# The mixture runs in the default suite; the VAE and GAN cases (each a minute
# of real processes on 2 cores) in the slow tier, which .ci/run also runs.
@pytest.mark.parametrize("sig,model", [
    (signal.SIGKILL, MODEL),
    pytest.param(signal.SIGTERM, "vae", marks=pytest.mark.slow),
    pytest.param(signal.SIGKILL, "gan", marks=pytest.mark.slow)],
    ids=["sigkill-gmm", "sigterm-vae", "sigkill-gan"])
def test_density_mle_stopped_mid_run_then_resume_equals_uninterrupted(sig, model):
  """kill -9 (last checkpoint) or SIGTERM (checkpoint at the next step), then
  resume: a mixture, the VAE (its own training loss and rng per step), and the
  GAN with its two optimizers and its coarse-to-fine step counter (a mutable
  collection), each bitwise equal to the uninterrupted run."""
  scenario = _density_scenario(sig, model)  # already running unless picked alone
  try:
    got, want, metrics = scenario.finish()
    assert [r["step"] for r in metrics if r["split"] == "train"] == list(
        range(EVERY, NUM_STEPS + 1, EVERY))
    assert _without_timing(got["models"][model]) == _without_timing(want["models"][model])
    _assert_same_params(density_trained.load_density(str(scenario.run_dir), model).params,
                        density_trained.load_density(str(scenario.ref_dir), model).params)
  finally:
    scenario.stop()


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"),
                    reason="needs the Debian dataset-fashion-mnist files")
def test_classify_sigkill_mid_run_then_resume_equals_uninterrupted():
  """The CNN (BatchNorm state, dropout keys): 6 epochs of 8 steps, killed after 2."""
  scenario = KillScenario(
      "classify.py", ["--config=genmodels/classify/config.py:smoke", "--config.train.epochs=6",
                      "--progress=false"],
      "checkpoints", kill_after=16, final_step=48)
  try:
    got, want, metrics = scenario.finish()
    assert [r["step"] for r in metrics if r["split"] == "test"] == list(range(8, 49, 8))
    assert _without_timing(got) == _without_timing(want)
  finally:
    scenario.stop()


@pytest.mark.slow
def test_image_pixelcnn_sigkill_mid_run_then_resume_equals_uninterrupted():
  """An image model (the PixelCNN on the synthetic smoke images), killed with
  kill -9 after its second checkpoint: resumed, its train state, metrics and
  results row (bits/dim and the sample yardstick) equal the uninterrupted run's."""
  name, steps, every = "pixelcnn", 60, 10
  scenario = KillScenario(
      "image_density.py",
      ["--config=genmodels/images/config.py:smoke", f"--model={name}", "--progress=false",
       "--figures=false", f"--config.models.{name}.train.num_steps={steps}",
       f"--config.models.{name}.train.checkpoint_every={every}",
       f"--config.models.{name}.train.log_every={every}",
       f"--config.models.{name}.train.steps_per_dispatch=1"],
      f"models/{name}/checkpoints", kill_after=2 * every, final_step=steps)
  try:
    got, want, metrics = scenario.finish()
    assert [r["step"] for r in metrics if r["split"] == "train"] == list(
        range(every, steps + 1, every))
    assert _without_timing(got["models"][name]) == _without_timing(want["models"][name])
  finally:
    scenario.stop()
