"""Maximum likelihood on the world map (genmodels.density) and its training.

* Gradient MLE of a Gaussian through the shared training loop lands on numpy's
  closed form, and the jitted multi-step traces once.
* The uniform box's KL to the truth is log(box area / land area).
* experiments/density_mle.py end to end (in a subprocess that conftest.py
  starts right after collection, so that it overlaps with the other tests),
  and ``load_density`` on its workdir.
"""

import atexit
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

import genmodels
from genmodels import density as density_experiment
from genmodels import models
from genmodels.data import world_map
from genmodels.density import config as density_config
from genmodels.models import density
from genmodels.training import experiment
from genmodels.training import loop
from genmodels.training import optim
from genmodels.training import steps as steps_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
E2E_MODELS = ("box", "gaussian_full", "spline_flow", "vae", "gan", "histogram")
ROW_KEYS = {"test_nll", "kl_to_truth", "zero_density_fraction", "land_precision",
            "num_params", "train_seconds"}
DATA_MEAN = np.array([3.0, -2.0])
DATA_COV = np.array([[4.0, 1.8], [1.8, 2.0]])


_E2E = {}


def _launch_e2e():
  """Starts experiments/density_mle.py in a subprocess (once per session)."""
  if not _E2E:
    root = pathlib.Path(tempfile.mkdtemp(prefix="density_mle_e2e_"))
    workdir, log_path = root / "run", root / "log.txt"
    cmd = [sys.executable, "experiments/density_mle.py",
           "--config=genmodels/density/config.py:smoke",
           f"--model={','.join(E2E_MODELS)}", f"--workdir={workdir}",
           "--progress=false", "--config.models.spline_flow.train.num_steps=20"]
    with open(log_path, "w") as log:
      proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    _E2E.update(proc=proc, workdir=workdir, log_path=log_path, root=root)
    atexit.register(_stop_e2e)  # Even if no test here runs (-x, -k, Ctrl-C).
  return _E2E


def _stop_e2e():
  if not _E2E:
    return
  if _E2E["proc"].poll() is None:
    _E2E["proc"].kill()
    _E2E["proc"].wait()
  shutil.rmtree(_E2E["root"], ignore_errors=True)


def start_early(items):
  """Called by conftest.py after collection: overlap the run with other files."""
  if any("e2e" in item.fixturenames for item in items):
    _launch_e2e()


@pytest.fixture(scope="module")
def e2e_process():
  run = _launch_e2e()  # Already running if conftest.py started it.
  yield run["proc"], run["workdir"], run["log_path"]
  _stop_e2e()


@pytest.fixture(scope="module")
def e2e(e2e_process):
  proc, workdir, log_path = e2e_process
  try:
    rc = proc.wait(timeout=300)
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.wait()
    pytest.fail("experiments/density_mle.py did not finish in 300 s")
  tail = log_path.read_text()[-3000:]
  assert rc == 0, f"density_mle.py exited with {rc}:\n{tail}"
  with open(workdir / "results.json") as f:
    return workdir, json.load(f)


@pytest.fixture(scope="module")
def world():
  """The smoke config's data (the e2e run uses the same sizes and seed)."""
  return world_map.load(num_train=2000, num_validation=500, num_test=2000)


def _smoke_config():
  return density_config.get_config("smoke")


# --- gradient MLE == closed form, and one trace of the multi-step ---------------------


@pytest.fixture(scope="module")
def gaussian_data():
  x = np.random.default_rng(0).multivariate_normal(DATA_MEAN, DATA_COV, 2000)
  return x.astype(np.float32)


@pytest.mark.parametrize("diagonal", [False, True], ids=["full", "diag"])
def test_gradient_mle_equals_closed_form(diagonal, gaussian_data, tmp_path, monkeypatch):
  x = gaussian_data
  model = density.Gaussian(diagonal=diagonal, init_from_data=False,
                           loc=(0.0, 0.0), scale=(2.0, 2.0))
  num_steps = 300
  traced = []
  make_multi_step = steps_lib.make_multi_step

  def counting_make_multi_step(loss_fn):
    multi_step = make_multi_step(loss_fn)

    def wrapped(*args):
      traced.append(1)  # Runs once per trace, never per call.
      return multi_step(*args)

    return wrapped

  monkeypatch.setattr(loop.steps_lib, "make_multi_step", counting_make_multi_step)
  cfg = optim.optimizer_config(name="adamw", learning_rate=0.05,
                               schedule="warmup_cosine", warmup_steps=10, grad_clip=1.0)
  result = loop.train(
      init_fn=jax.jit(lambda k: model.init(k, jnp.zeros((4, 2)), method="log_prob")),
      loss_fn=density_experiment.density_loss(model), tx=optim.make(cfg, num_steps),
      train_data={"x": x},
      config=loop.LoopConfig(num_steps=num_steps, batch_size=len(x), log_every=50,
                             checkpoint_every=0, steps_per_dispatch=50,
                             progress=False),
      workdir=str(tmp_path))
  # Six dispatches of 50 steps, each with new indices: one trace only.
  assert len(traced) == 1
  assert int(result.state.step) == num_steps

  mean, cov = jax.jit(lambda p: model.apply({"params": p}, method="mean_and_cov"))(
      result.state.params)
  x64 = x.astype(np.float64)
  expected_cov = np.cov(x64, rowvar=False, bias=True)
  if diagonal:
    expected_cov = np.diag(np.diag(expected_cov))
  sd = np.sqrt(np.diag(expected_cov))
  np.testing.assert_allclose(mean, x64.mean(0), atol=1e-3 * sd.min())
  np.testing.assert_allclose(cov, expected_cov, atol=1e-3 * sd.min()**2)
  # The training curve ends at the closed-form Gaussian's NLL.
  closed_nll = -np.mean(stats.multivariate_normal(x64.mean(0), expected_cov).logpdf(x64))
  last_train = result.last("train")
  assert last_train["nll"] == pytest.approx(closed_nll, abs=1e-3)


def test_multi_step_traces_once(gaussian_data):
  x = jnp.asarray(gaussian_data[:256])
  model = density.Gaussian(diagonal=True, init_from_data=False, loc=(0.0, 0.0),
                           scale=(2.0, 2.0))
  variables = jax.jit(lambda k: model.init(k, x, method="log_prob"))(jax.random.key(0))
  state = steps_lib.create_train_state(variables, optax.adam(1e-2))
  multi_step = jax.jit(chex.assert_max_traces(
      steps_lib.make_multi_step(density_experiment.density_loss(model)), n=1))
  seed_key = jax.random.key(1)
  rng = np.random.default_rng(0)
  losses = []
  for _ in range(3):  # Different index batches, the same shapes: no new trace.
    idx = jnp.asarray(rng.integers(0, len(x), size=(4, 64)), jnp.int32)
    state, metrics = multi_step(state, {"x": x}, idx, seed_key)
    assert np.all(np.asarray(metrics["finite"]))
    losses.append(np.asarray(metrics["loss"]))
  assert int(state.step) == 12
  assert losses[-1][-1] < losses[0][0]


# --- the uniform box's KL is log(box area / land area) ------------------------------


def test_box_kl_is_log_area_ratio(world, tmp_path):
  cfg = _smoke_config().models.box
  options = experiment.Options(progress=False, figures=False)
  task = density_experiment.make_task("box", cfg, world, 0, options)
  result = experiment.train(task, experiment.model_dir(str(tmp_path), task), 0, options)
  row = task.report(result, str(tmp_path))
  trained = genmodels.load_density(str(tmp_path), "box")
  lo = world.train.min(0).astype(np.float64)
  hi = world.train.max(0).astype(np.float64)
  expected_kl = np.log(np.prod(hi - lo)) - np.log(world_map.land_area())
  outside = ~np.all((world.test >= lo) & (world.test <= hi), axis=-1)
  assert row["zero_density_fraction"] == pytest.approx(outside.mean(), abs=1e-9)
  if outside.any():
    assert row["kl_to_truth"] == math.inf and row["test_nll"] == math.inf
    assert row["kl_on_support"] == pytest.approx(expected_kl, abs=1e-4)
  else:
    assert row["kl_to_truth"] == pytest.approx(expected_kl, abs=1e-4)
  assert row["num_params"] == 4 and row["num_steps"] == 0
  # Land precision of box samples is land-in-box / box area: count the mask's
  # land cells whose centres lie in the box (binomial error < 0.004 here).
  ocean = world_map.ocean_mask()
  cpd = world_map.CELLS_PER_DEGREE
  lat_centres = 90 - (np.arange(ocean.shape[0]) + 0.5) / cpd
  lon_centres = -180 + (np.arange(ocean.shape[1]) + 0.5) / cpd
  rows = np.flatnonzero((lat_centres >= lo[1]) & (lat_centres <= hi[1]))
  cols = np.flatnonzero((lon_centres >= lo[0]) & (lon_centres <= hi[0]))
  block = ocean[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
  land_in_box = (block.size - np.count_nonzero(block)) / cpd**2
  assert row["land_precision"] == pytest.approx(land_in_box / np.prod(hi - lo), abs=0.015)
  # The returned model scores points like the closed form.
  lp = trained.log_prob(world.test)
  np.testing.assert_allclose(lp[~outside], -np.log(np.prod(hi - lo)), rtol=1e-5)
  assert np.all(np.isneginf(lp[outside]))


# --- end to end -----------------------------------------------------------------------


def _num(value):
  """results.json writes non-finite floats as strings ("inf")."""
  return float(value)


def test_e2e_results_report_and_figures(e2e):
  workdir, results = e2e
  assert set(results) >= {"entropy", "models", "run"}
  run = results["run"]  # a slow number explains itself
  assert run["machine"]["cpu_model"] and run["versions"]["jax"]
  assert "cpu_steal_fraction" in run
  assert results["entropy"] == pytest.approx(world_map.entropy(), abs=1e-9)
  assert set(results["models"]) == set(E2E_MODELS)
  for name, row in results["models"].items():
    assert ROW_KEYS <= set(row), (name, sorted(row))
    for kind in ("density", "samples"):
      png = workdir / "figures" / f"{name}_{kind}.png"
      assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert 0.0 <= _num(row["land_precision"]) <= 1.0
    assert 0.0 <= _num(row["land_recall_1deg"]) <= 1.0
    if name == "gan":  # implicit: the yardstick's columns only
      assert row["test_nll"] is None and row["kl_to_truth"] is None
      assert row["validation_nll"] is None
      continue
    test_nll, kl = _num(row["test_nll"]), _num(row["kl_to_truth"])
    assert kl == pytest.approx(test_nll - results["entropy"], abs=1e-6) or (
        kl == test_nll == math.inf)
    # KL >= 0 up to the noise of 2,000 test points (a few hundredths of a nat).
    assert kl > -0.1, (name, kl)
    if "kl_on_support" in row:
      assert _num(row["kl_on_support"]) > -0.1
    assert 0.0 <= _num(row["zero_density_fraction"]) <= 1.0
    assert int(row["num_params"]) > 0 and _num(row["train_seconds"]) >= 0
  # Only the gradient-trained models have a training curve.
  assert (workdir / "figures" / "spline_flow_training.png").exists()
  assert not (workdir / "figures" / "box_training.png").exists()
  # The VAE's KL is a bound (IWAE), with the ELBO's looser one beside it: the
  # same K log-weights, logsumexp against mean, so per point ELBO <= IWAE.
  vae = results["models"]["vae"]
  assert vae["kl_is_upper_bound"] is True
  assert _num(vae["elbo_kl_to_truth"]) >= _num(vae["kl_to_truth"])
  assert {"iwae_samples", "iwae_doubling_gain"} <= set(vae)
  # Every model on one page, grouped by branch of the taxonomy.
  assert (workdir / "figures" / "taxonomy.png").read_bytes()[:4] == b"\x89PNG"
  assert results["models"]["box"]["num_params"] == 4  # lo and hi
  report = (workdir / "report.md").read_text()
  for name in E2E_MODELS:
    assert f"(`{name}`) |" in report  # display name, then the internal one
    assert f"figures/{name}_density.png" in report


def test_load_density_best_reproduces_test_nll(e2e, world):
  workdir, results = e2e
  rows = {n: r for n, r in results["models"].items() if r["validation_nll"] is not None}
  best = min(rows, key=lambda n: _num(rows[n]["validation_nll"]))
  trained = genmodels.load_density(str(workdir))  # The public entry point.
  assert trained.name == best
  test_nll = -np.mean(trained.log_prob(world.test).astype(np.float64))
  assert test_nll == pytest.approx(_num(rows[best]["test_nll"]), rel=1e-5)


def test_load_density_by_name_and_bad_input(e2e, world):
  workdir, results = e2e
  box = genmodels.load_density(str(workdir), "box")
  assert box.name == "box"
  lp = box.log_prob(world.test)
  row = results["models"]["box"]
  assert np.mean(np.isneginf(lp)) == pytest.approx(_num(row["zero_density_fraction"]))
  finite = np.isfinite(lp)
  if not finite.all():
    assert -np.mean(lp[finite]) == pytest.approx(_num(row["test_nll_on_support"]), rel=1e-5)
  samples = box.sample(jax.random.key(0), 100)
  assert samples.shape == (100, 2) and np.all(np.isfinite(box.log_prob(samples)))
  single = box.log_prob(samples[0])  # One point [2] gives a scalar.
  assert np.ndim(single) == 0 and np.isfinite(single)
  for bad in (np.zeros((5, 3)), np.zeros((2, 2, 2)), np.float32(1.0), np.zeros(3)):
    with pytest.raises(ValueError):
      box.log_prob(bad)
  with pytest.raises(ValueError):
    box.sample(jax.random.key(0), 0)
  with pytest.raises(ValueError):
    genmodels.load_density(str(workdir), "gmm")
  gan = genmodels.load_density(str(workdir), "gan")  # samples, no density
  gan_samples = gan.sample(jax.random.key(0), 50)
  assert gan_samples.shape == (50, 2) and world_map.in_box(gan_samples).all()
  with pytest.raises(ValueError, match="implicit"):
    gan.log_prob(gan_samples)
  with pytest.raises(ValueError):
    genmodels.load_density(str(workdir.parent / "missing"))
  assert os.path.exists(workdir / "models" / "box" / "model.json")


def test_model_lists_mix_names_and_groups_each_model_once():
  from genmodels.density import task as density_task  # pylint: disable=g-import-not-at-top
  config = _smoke_config()
  config.model = "ladder,vae,gan,gmm"
  assert density_task.model_names(config) == density_config.ladder() + ["vae", "gan"]
  config.model = "gan, taxonomy"
  assert density_task.model_names(config) == ["gan"] + [
      m for m in density_config.taxonomy() if m != "gan"]
  config.model = "ladder,nope"
  with pytest.raises(ValueError, match="unknown --model 'nope'"):
    density_task.model_names(config)


def test_energy_model_evaluation_computes_log_z_once_per_evaluation(world, tmp_path):
  """The engine calls the task's ``eval_prepare`` (the energy model's log Z)
  once per evaluation, not once per batch, and the NLL it reports is the one
  of log_prob computed without the cache; a model without a normaliser has
  no ``eval_prepare``."""
  cfg = _smoke_config().models.ebm
  cfg.train.update(num_steps=4, eval_every=2, eval_batch_size=256, log_every=2,
                   checkpoint_every=0)
  options = experiment.Options(progress=False, figures=False)
  task = density_experiment.make_task("ebm", cfg, world, 0, options)
  calls = []
  prepare = task.eval_prepare

  def shifted_prepare(variables):  # log Z + 1: what the batches read shows
    calls.append(1)
    out = prepare(variables)
    return {**out, "normalizer": {"log_z": out["normalizer"]["log_z"] + 1.0}}

  task.eval_prepare = shifted_prepare
  result = experiment.train(task, str(tmp_path), 0, options)
  assert len(calls) == 2  # steps 2 and 4; 2 + 8 batches each
  model = models.get_density_model("ebm", **cfg.model.to_dict())
  log_prob = jax.jit(lambda p, x: model.apply({"params": p}, x, method="log_prob"))
  lp = np.asarray(log_prob(result.state.params, jnp.asarray(world.test)))
  # Every batch used the prepared log Z (shifted by 1), none recomputed it.
  assert result.last("test")["nll"] == pytest.approx(-float(np.mean(lp)) + 1.0, rel=1e-5)

  trained = genmodels.density.trained.TrainedDensity("ebm", model, result.state.params)
  prepared = []
  prepare_params = trained._prepare  # pylint: disable=protected-access
  trained._prepare = lambda v: (prepared.append(1), prepare_params(v))[1]
  for _ in range(3):
    np.testing.assert_allclose(trained.log_prob(world.test[:100]), lp[:100], rtol=1e-6)
  assert len(prepared) == 1  # once for these parameters
  trained.params = jax.tree.map(lambda p: p * 1.5, result.state.params)  # new log Z
  lp2 = np.asarray(log_prob(trained.params, jnp.asarray(world.test[:100])))
  assert not np.allclose(lp2, lp[:100])
  np.testing.assert_allclose(trained.log_prob(world.test[:100]), lp2, rtol=1e-6)
  assert len(prepared) == 2
  box = density_experiment.make_task("box", _smoke_config().models.box, world, 0, options)
  box_variables = box.init(jax.random.key(0))
  assert set(box.eval_prepare(box_variables)) == {"params"}  # nothing to cache
