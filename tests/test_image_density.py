"""Density MLE on images (genmodels.images): exact discrete likelihoods.

* Both models' probability masses sum to 1 over all 256 images of 2x2 pixels
  with 4 levels, at random parameters.
* The independent-pixel MLE is the smoothed frequency table, and its bits/dim
  match a numpy computation; the mixture's log_prob is numpy's logsumexp.
* Samples have the data's shape, dtype and range, and their pixel frequencies
  match the models' marginals.
* The discretisation (28x28 -> 16x16, 4 levels) against an independent numpy
  route (pixel replication, block means).
* experiments/image_density.py end to end on the smoke config's synthetic
  data (a subprocess started after collection, overlapping the other tests).
"""

import atexit
import functools
import itertools
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import special

from genmodels.errors import UsageError
from genmodels.images import config as images_config
from genmodels.images import data as data_lib
from genmodels.images import cards
from genmodels.images import models
from genmodels.images import report
from genmodels.images import task as task_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
K = 4
ALL_2x2 = np.array(list(itertools.product(range(K), repeat=4)), np.int32).reshape(-1, 2, 2, 1)


MIXTURE_FIELDS = {"num_components": 5}
# The per-pixel table models (closed-form marginals); the deep models have
# their own test files (test_pixelcnn.py, test_image_flow.py, test_image_vae.py).
TABLE_MODELS = ("independent_pixels", "pixel_mixture")
# The end-to-end run: the table models and one network (the deep models'
# own end-to-end checks are in their files).
E2E_MODELS = (*TABLE_MODELS, "pixelcnn")
NUM_SAMPLES = 20_000


def _tiny_data(n=50, seed=0):
  return np.random.default_rng(seed).integers(0, K, (n, 2, 2, 1)).astype(np.uint8)


def _fields(name):
  return MIXTURE_FIELDS if name == "pixel_mixture" else {}


@functools.lru_cache(maxsize=None)
def _init(name, n=50):
  """(model, params initialised from n tiny training images), one compile."""
  model = cards.get_model(name, K, **_fields(name))
  init = jax.jit(lambda k, x: model.init(k, x, method="log_prob"))
  return model, init(jax.random.key(0), jnp.asarray(_tiny_data(n)))["params"]


def _random_params(params, seed=1):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda l: jnp.asarray(2.0 * rng.standard_normal(l.shape),
                                            jnp.float32), params)


@functools.lru_cache(maxsize=None)
def _at_random_params(name):
  """Random parameters and, in one jitted call, the mass of every 2x2 image,
  of two out-of-range images, samples and the marginals."""
  model, params = _init(name)
  params = _random_params(params)
  bad = np.array(ALL_2x2[:2])
  bad[0, 0, 0, 0], bad[1, 1, 1, 0] = K, -1

  @jax.jit
  def run(p):
    v = {"params": p}
    return dict(lp=model.apply(v, jnp.asarray(ALL_2x2), method="log_prob"),
                bad=model.apply(v, jnp.asarray(bad), method="log_prob"),
                samples=model.apply(v, jax.random.key(2), NUM_SAMPLES, method="sample"),
                marginals=model.apply(v, method="marginals"))

  return model, params, jax.tree.map(np.asarray, run(params))


# ------------------------------------------------------- end to end (early)

_E2E = {}


def _launch_e2e():
  if not _E2E:
    root = pathlib.Path(tempfile.mkdtemp(prefix="image_density_e2e_"))
    workdir, log_path = root / "run", root / "log.txt"
    cmd = [sys.executable, "experiments/image_density.py",
           "--config=genmodels/images/config.py:smoke", f"--workdir={workdir}",
           f"--model={','.join(E2E_MODELS)}", "--progress=false"]
    with open(log_path, "w") as log:
      proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    _E2E.update(proc=proc, workdir=workdir, log_path=log_path, root=root)
    atexit.register(_stop_e2e)
  return _E2E


def _stop_e2e():
  if _E2E:
    if _E2E["proc"].poll() is None:
      _E2E["proc"].kill()
      _E2E["proc"].wait()
    shutil.rmtree(_E2E["root"], ignore_errors=True)


def start_early(items):
  """Called by conftest.py after collection: overlap the run with the other tests."""
  if any("e2e" in item.fixturenames for item in items):
    _launch_e2e()


@pytest.fixture
def e2e():
  run = _launch_e2e()
  try:
    rc = run["proc"].wait(timeout=240)
  except subprocess.TimeoutExpired:
    pytest.fail("experiments/image_density.py (smoke) did not finish in 240 s")
  log = run["log_path"].read_text()
  assert rc == 0, f"the smoke run failed (exit {rc}):\n{log[-3000:]}"
  return run["workdir"], log


# ------------------------------------------------------------- likelihoods

@pytest.mark.parametrize("name", TABLE_MODELS)
def test_mass_sums_to_one_over_every_2x2_image(name):
  _, _, out = _at_random_params(name)
  lp = out["lp"].astype(np.float64)
  assert lp.shape == (K ** 4,) and np.all(np.isfinite(lp))
  np.testing.assert_allclose(special.logsumexp(lp), 0.0, atol=1e-5)
  assert np.all(out["bad"] == -np.inf)  # a value outside the levels: mass 0


def test_independent_mle_is_the_smoothed_frequencies_and_bpd_matches_numpy():
  x = _tiny_data(n=37)
  model, params = _init("independent_pixels", n=37)
  counts = np.stack([(x[..., 0] == k).sum(0) for k in range(K)], -1)  # [2, 2, K]
  expected = (counts + 0.5) / (len(x) + K * 0.5)
  got = np.asarray(jax.nn.softmax(params["logits"], -1))[..., 0, :]
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  assert model.num_free_params(params) == 4 * (K - 1)
  # Bits/dim on held-out images, from the table by hand.
  test = _tiny_data(n=23, seed=5)
  hand = -np.mean([sum(np.log(expected[i, j, img[i, j, 0]]) for i in range(2)
                       for j in range(2)) for img in test])
  summary = report.nll_summary(report.per_image_nll(model, params, test), 4)
  np.testing.assert_allclose(summary["nll_nats"], hand, rtol=1e-6)
  np.testing.assert_allclose(summary["bpd"], hand / (4 * math.log(2)), rtol=1e-6)


def test_mixture_log_prob_is_numpy_logsumexp():
  model, params, out = _at_random_params("pixel_mixture")
  m = MIXTURE_FIELDS["num_components"]
  w = np.asarray(params["mixture_logits"], np.float64)
  logits = np.asarray(params["logits"], np.float64)[..., 0, :]  # [M, 2, 2, K]
  log_w = w - special.logsumexp(w)
  log_p = logits - special.logsumexp(logits, -1, keepdims=True)
  comp = np.array([[sum(log_p[c, i, j, img[i, j, 0]] for i in range(2) for j in range(2))
                    for c in range(m)] for img in ALL_2x2])
  expected = special.logsumexp(comp + log_w, axis=-1)
  np.testing.assert_allclose(out["lp"], expected, rtol=1e-5, atol=1e-5)
  assert model.num_free_params(params) == (m - 1) + m * 4 * (K - 1)


@pytest.mark.parametrize("name", TABLE_MODELS)
def test_samples_match_shape_and_marginals(name):
  _, _, out = _at_random_params(name)
  s, marginals = out["samples"], out["marginals"]  # marginals [2, 2, 1, K]
  assert s.shape == (NUM_SAMPLES, 2, 2, 1) and s.dtype == np.int32
  assert s.min() >= 0 and s.max() < K
  freq = np.stack([(s == k).mean(0) for k in range(K)], -1)
  sigma = np.sqrt(marginals * (1 - marginals) / NUM_SAMPLES)
  assert np.all(np.abs(freq - marginals) <= 5 * sigma + 1e-4), (freq, marginals)
  # The marginals are the exact joint mass summed over the other pixels.
  p00 = np.array([np.exp(out["lp"][ALL_2x2[:, 0, 0, 0] == k].astype(np.float64)).sum()
                  for k in range(K)])
  np.testing.assert_allclose(p00, marginals[0, 0, 0], atol=1e-5)


# ---------------------------------------------------------- discretisation

def _by_replication(images, size, levels):
  """Independent route: replicate each pixel to an L x L image, block-sum, quantise."""
  n, src = images.shape[:2]
  lcm = src * size // math.gcd(src, size)
  up = np.repeat(np.repeat(images[..., 0].astype(np.int64), lcm // src, 1), lcm // src, 2)
  b = lcm // size
  sums = up.reshape(n, size, b, size, b).sum((2, 4))
  return ((sums * levels) // (256 * b * b)).astype(np.uint8)[..., None]


def test_discretise_book_setting_against_numpy():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (20, 28, 28, 1)).astype(np.uint8)
  images[0] = 255
  images[1] = 0
  images[2] = 64  # exactly on a level boundary: floor(64 * 4 / 256) = 1
  images[3] = 63
  out = data_lib.discretise(images, 16, 4)
  assert out.shape == (20, 16, 16, 1) and out.dtype == np.uint8
  np.testing.assert_array_equal(out, _by_replication(images, 16, 4))
  assert np.all(out[0] == 3) and np.all(out[1] == 0)
  assert np.all(out[2] == 1) and np.all(out[3] == 0)
  # Float means agree away from boundaries: floor(mean / 64).
  mean = (np.repeat(np.repeat(images[4:, ..., 0].astype(np.float64), 4, 1), 4, 2)
          .reshape(16, 16, 7, 16, 7).mean((2, 4)))
  np.testing.assert_array_equal(out[4:, ..., 0], np.floor(mean / 64).astype(np.uint8))
  # 14x14 is plain 2x2 mean-pooling; 28x28 with 256 levels is the raw bytes.
  pooled = images[..., 0].astype(np.float64).reshape(20, 14, 2, 14, 2).mean((2, 4))
  np.testing.assert_array_equal(data_lib.discretise(images, 14, 4)[..., 0],
                                np.floor(pooled * 4 / 256).astype(np.uint8))
  np.testing.assert_array_equal(data_lib.discretise(images, 28, 256), images)
  with pytest.raises(UsageError):
    data_lib.discretise(images, 29, 4)


def test_discretise_real_fashion_mnist():
  if not os.path.isdir(data_lib.FASHION_MNIST_DIR):
    pytest.skip(f"{data_lib.FASHION_MNIST_DIR} absent (Debian dataset-fashion-mnist)")
  from genmodels.data import images as images_lib  # pylint: disable=g-import-not-at-top
  raw, _ = images_lib.read_fashion_mnist(data_lib.FASHION_MNIST_DIR, "t10k")
  raw = raw[:500]
  out = data_lib.discretise(raw, 16, 4)
  assert out.shape == (500, 16, 16, 1) and out.max() == 3 and out.min() == 0
  np.testing.assert_array_equal(out, _by_replication(raw, 16, 4))


def test_synthetic_data_is_seeded_and_discretised():
  c = images_config.get_config("smoke")
  a, b = data_lib.load(c), data_lib.load(c)
  np.testing.assert_array_equal(a.train, b.train)
  assert a.train.shape == (512, 4, 4, 1) and a.test.shape == (256, 4, 4, 1)
  assert len(a.validation) == 256 and a.num_dims == 16
  assert a.train.max() <= 3 and len(np.unique(a.train)) == 4
  c.seed = 1
  assert not np.array_equal(data_lib.load(c).train, a.train)


def test_check_refuses_bad_fields():
  for field, value, match in [("image_size", 0, "image_size"),
                              ("num_levels", 1, "num_levels"),
                              ("dataset", "mnist", "unknown dataset"),
                              ("model", "no_such_model", "unknown --model")]:
    c = images_config.get_config("smoke")
    c[field] = value
    with pytest.raises(UsageError, match=match):
      task_lib.check(c)
  c = images_config.get_config("smoke")
  c.models.pixel_mixture.model.num_components = 0
  with pytest.raises(UsageError, match="num_components"):
    task_lib.check(c)
  c = images_config.get_config("")
  c.num_train = 59_000
  c.manual_dir = ""  # the size check, with or without the Debian files
  with pytest.raises(UsageError, match="exceed"):
    task_lib.check(c)


# --------------------------------------------------------------- end to end

def test_smoke_run_end_to_end(e2e):
  workdir, _ = e2e
  results = json.loads((workdir / "results.json").read_text())
  assert results["likelihood"] == "exact (discrete; no dequantization)"
  assert results["num_dims"] == 16 and results["num_test"] == 256
  rows = results["models"]
  assert set(rows) == set(E2E_MODELS)
  for r in rows.values():
    assert 0 < r["test_bpd"] < results["uniform_bpd"]
    assert r["test_bpd_se"] > 0 and r["zero_mass_test_images"] == 0
    np.testing.assert_allclose(r["test_bpd"], r["test_nll_nats"] / (16 * math.log(2)))
  # The closed-form model's test bits/dim, recomputed from the data with numpy.
  data = data_lib.load(images_config.get_config("smoke"))
  counts = np.stack([(data.train[..., 0] == k).sum(0) for k in range(K)], -1)
  log_p = np.log((counts + 0.5) / (len(data.train) + K * 0.5))  # [4, 4, K]
  rows_i, cols_i = np.indices((4, 4))
  nll = -np.array([log_p[rows_i, cols_i, img[..., 0]].sum() for img in data.test])
  np.testing.assert_allclose(rows["independent_pixels"]["test_bpd"],
                             nll.mean() / (16 * math.log(2)), rtol=1e-5)
  np.testing.assert_allclose(rows["independent_pixels"]["test_bpd_se"],
                             nll.std(ddof=1) / np.sqrt(len(nll)) / (16 * math.log(2)),
                             rtol=1e-4)
  report_md = (workdir / "report.md").read_text()
  assert "exact (discrete; no dequantization)" in report_md
  for name in E2E_MODELS:
    assert (workdir / "figures" / f"{name}_samples.png").stat().st_size > 0
    assert f"figures/{name}_samples.png" in report_md
  assert (workdir / "figures" / "data.png").exists()


def test_load_density_scores_and_samples_images_with_clear_errors(e2e):
  """genmodels.load_density on an image workdir: the best model by validation
  bits/dim, its log_prob the run's test NLL, samples of the data's shape and
  dtype; a wrong shape, a value outside the levels or a huge n is one line."""
  import genmodels  # pylint: disable=g-import-not-at-top
  workdir, _ = e2e
  results = json.loads((workdir / "results.json").read_text())
  rows = results["models"]
  best = min(rows, key=lambda n: rows[n]["validation_bpd"])
  data = data_lib.load(images_config.get_config("smoke"))
  for name in (None, "independent_pixels"):
    trained = genmodels.load_density(str(workdir), name)
    assert trained.name == (name or best)
    lp = trained.log_prob(data.test)
    np.testing.assert_allclose(-np.mean(lp), rows[trained.name]["test_nll_nats"], rtol=1e-5)
    np.testing.assert_allclose(trained.log_prob(data.test[3]), lp[3], rtol=1e-6)
    assert trained.likelihood == rows[trained.name]["likelihood"]
    s = trained.sample(jax.random.key(0), 5)
    assert s.shape == (5, *data.shape) and s.dtype == np.uint8
    assert s.max() < data.num_levels
  for bad, words in [(data.test[:, :3], "shape"), (data.test[..., 0], "shape"),
                     (data.test.astype(np.int32) + K, "grey levels"),
                     (data.test.astype(np.float32) + 0.5, "grey levels")]:
    with pytest.raises(UsageError, match=words):
      trained.log_prob(bad)
  for n in (0, 10**9, 2.5, True):
    with pytest.raises(UsageError, match="n must be"):
      trained.sample(jax.random.key(0), n)
