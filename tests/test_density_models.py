"""Maths of the closed-form and mixture density models (genmodels.models.density).

Every check compares the model with an independent computation: numpy's
closed-form MLE, scipy's normal log-density, quadrature of exp(log_prob), and
a chi-square test of samples against the model's own probability per bin.
Each model's log_prob is jitted once for a fixed chunk of points.
"""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special
from scipy import stats

from genmodels.training import experiment
from genmodels import models
from genmodels import probability
from genmodels.models import density

CHUNK = 1 << 16  # probability.integrate_2d's default chunk: one compile per model.
NUM_SAMPLES = 20_000
DATA_MEAN = np.array([3.0, -2.0])
DATA_COV = np.array([[4.0, 1.8], [1.8, 2.0]])


@pytest.fixture(scope="module")
def data():
  x = np.random.default_rng(0).multivariate_normal(DATA_MEAN, DATA_COV, 2000)
  return x.astype(np.float32)


class Evaluator:
  """Jitted log_prob (fixed [CHUNK, 2] input) and sample (fixed n) of a model."""

  def __init__(self, model):
    self.model = model
    self._log_prob = jax.jit(lambda v, x: model.apply(v, x, method="log_prob"))
    self._sample = jax.jit(lambda v, k: model.apply(v, k, NUM_SAMPLES, method="sample"))

  def log_prob(self, variables, x):
    x = np.asarray(x, np.float32)
    out = []
    for start in range(0, len(x), CHUNK):
      part = x[start:start + CHUNK]
      padded = np.concatenate([part, np.zeros((CHUNK - len(part), 2), np.float32)])
      out.append(np.asarray(self._log_prob(variables, padded))[:len(part)])
    return np.concatenate(out).astype(np.float64)

  def density(self, variables):
    return lambda x: np.exp(self.log_prob(variables, x))

  def sample(self, variables, seed=0):
    return np.asarray(self._sample(variables, jax.random.key(seed)), np.float64)


def bin_masses(density_fn, lo, hi, bins, fine=64):
  """Probability mass in each of bins x bins cells of [lo, hi], by midpoint rule."""
  lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
  num = bins * fine
  h = (hi - lo) / num
  xs = lo[0] + h[0] * (np.arange(num) + 0.5)
  ys = lo[1] + h[1] * (np.arange(num) + 0.5)
  grid = np.stack(np.meshgrid(xs, ys, indexing="ij"), -1).reshape(-1, 2)
  dens = density_fn(grid).reshape(bins, fine, bins, fine)
  return dens.sum(axis=(1, 3)) * h[0] * h[1]


def chi_square_pvalue(samples, density_fn, lo, hi, bins=8):
  """p-value of samples' 2-D histogram (plus an 'outside' cell) vs the density."""
  n = len(samples)
  mass = bin_masses(density_fn, lo, hi, bins)
  counts, _, _ = np.histogram2d(samples[:, 0], samples[:, 1], bins=bins,
                                range=[[lo[0], hi[0]], [lo[1], hi[1]]])
  expected = n * np.append(mass.ravel(), max(1.0 - mass.sum(), 0.0))
  observed = np.append(counts.ravel(), n - counts.sum())
  small = expected < 5  # Pool sparse cells so the chi-square law holds.
  if small.any():
    expected = np.append(expected[~small], expected[small].sum())
    observed = np.append(observed[~small], observed[small].sum())
  keep = expected > 0
  assert observed[~keep].sum() == 0, "samples where the model has no mass"
  expected, observed = expected[keep], observed[keep]
  chi2 = np.sum((observed - expected)**2 / expected)
  return stats.chi2.sf(chi2, df=len(expected) - 1)


def _init(model, x, seed=0):
  return jax.jit(lambda k, x: model.init(k, x, method="log_prob"))(
      jax.random.key(seed), jnp.asarray(x))


# --- UniformBox -----------------------------------------------------------------


@pytest.fixture(scope="module")
def box(data):
  model = density.UniformBox()
  return Evaluator(model), _init(model, data)


def test_box_init_is_bounding_box(box, data):
  ev, variables = box
  np.testing.assert_array_equal(variables["params"]["lo"], data.min(0))
  np.testing.assert_array_equal(variables["params"]["hi"], data.max(0))
  area = np.prod(data.max(0).astype(np.float64) - data.min(0))
  lp = ev.log_prob(variables, data)
  np.testing.assert_allclose(lp, -np.log(area), rtol=1e-6)
  outside = np.array([data.min(0) - 0.01, data.max(0) + 0.01,
                      [data.min(0)[0] - 1e-3, data.mean(0)[1]]])
  assert np.all(np.isneginf(ev.log_prob(variables, outside)))


def test_box_integrates_to_one(box):
  ev, variables = box
  lo, hi = np.asarray(variables["params"]["lo"]), np.asarray(variables["params"]["hi"])
  total = probability.integrate_2d(ev.density(variables), lo - 1.0, hi + 1.0, num=512)
  assert total == pytest.approx(1.0, abs=0.01)


def test_box_samples_match_density(box):
  ev, variables = box
  lo, hi = np.asarray(variables["params"]["lo"]), np.asarray(variables["params"]["hi"])
  samples = ev.sample(variables, seed=1)
  assert np.all((samples >= lo) & (samples <= hi))
  assert chi_square_pvalue(samples, ev.density(variables), lo, hi) > 1e-3


# --- Gaussian -------------------------------------------------------------------

GAUSS_LOC, GAUSS_SCALE = (1.0, -1.0), (2.0, 3.0)


@pytest.fixture(scope="module", params=[False, True], ids=["full", "diag"])
def gaussian(request, data):
  model = density.Gaussian(diagonal=request.param, loc=GAUSS_LOC, scale=GAUSS_SCALE)
  return request.param, Evaluator(model), _init(model, data)


def _mean_and_cov(model, variables):
  mean, cov = jax.jit(lambda v: model.apply(v, method="mean_and_cov"))(variables)
  return np.asarray(mean, np.float64), np.asarray(cov, np.float64)


def test_gaussian_closed_form_init_equals_numpy(gaussian, data):
  diagonal, ev, variables = gaussian
  mean, cov = _mean_and_cov(ev.model, variables)
  x = data.astype(np.float64)
  expected_cov = np.cov(x, rowvar=False, bias=True)
  if diagonal:
    expected_cov = np.diag(np.diag(expected_cov))
  np.testing.assert_allclose(mean, x.mean(0), rtol=1e-5)
  np.testing.assert_allclose(cov, expected_cov, rtol=1e-5, atol=1e-6)


def test_gaussian_log_prob_is_normal_log_density(gaussian, data):
  _, ev, variables = gaussian
  mean, cov = _mean_and_cov(ev.model, variables)
  expected = stats.multivariate_normal(mean, cov).logpdf(data[:500].astype(np.float64))
  np.testing.assert_allclose(ev.log_prob(variables, data[:500]), expected,
                             rtol=1e-5, atol=1e-5)


def test_gaussian_integrates_to_one(gaussian):
  _, ev, variables = gaussian
  mean, cov = _mean_and_cov(ev.model, variables)
  sd = np.sqrt(np.diag(cov))
  total = probability.integrate_2d(ev.density(variables), mean - 8 * sd,
                                   mean + 8 * sd, num=256)
  assert total == pytest.approx(1.0, abs=0.01)


def test_gaussian_samples_match_density_and_entropy(gaussian):
  _, ev, variables = gaussian
  mean, cov = _mean_and_cov(ev.model, variables)
  sd = np.sqrt(np.diag(cov))
  samples = ev.sample(variables, seed=2)
  p = chi_square_pvalue(samples, ev.density(variables), mean - 3 * sd, mean + 3 * sd)
  assert p > 1e-3
  # E_samples[-log p] is the entropy; its standard error is 1/sqrt(n) = 0.007.
  cross = -np.mean(ev.log_prob(variables, samples))
  assert cross == pytest.approx(probability.gaussian_entropy(cov), abs=0.03)
  np.testing.assert_allclose(samples.mean(0), mean, atol=4 * sd.max() / np.sqrt(len(samples)))


# --- GaussianMixture ------------------------------------------------------------

GMM_LOC, GMM_SCALE = (0.5, 0.0), (2.0, 1.0)
GMM_PARAMS = {
    "logits": np.array([0.5, -0.3, 0.0]),
    "means": np.array([[-1.0, 0.5], [1.0, -0.5], [0.3, 1.2]]),
    # Lower triangle and log-diagonal; the upper triangle must be ignored.
    "chol_raw": np.array([[[np.log(0.5), 7.0], [0.3, np.log(0.3)]],
                          [[np.log(0.4), -7.0], [-0.2, np.log(0.6)]],
                          [[np.log(0.3), 0.0], [0.0, np.log(0.3)]]]),
}


def _gmm_components():
  """Weights, means and covariances in data units, computed here in numpy."""
  raw = GMM_PARAMS["chol_raw"]
  chol = np.tril(raw, -1) + np.exp(np.diagonal(raw, axis1=1, axis2=2))[:, :, None] * np.eye(2)
  scale = np.asarray(GMM_SCALE)
  covs = np.einsum("kij,klj->kil", chol, chol) * np.outer(scale, scale)
  means = GMM_PARAMS["means"] * scale + np.asarray(GMM_LOC)
  weights = special.softmax(GMM_PARAMS["logits"])
  return weights, means, covs


@pytest.fixture(scope="module")
def gmm(data):
  model = density.GaussianMixture(num_components=3, loc=GMM_LOC, scale=GMM_SCALE,
                                  init_scale=0.2)
  init = _init(model, data)
  variables = {"params": {k: jnp.asarray(v, jnp.float32) for k, v in GMM_PARAMS.items()}}
  assert jax.tree.structure(variables) == jax.tree.structure(init)
  return Evaluator(model), init, variables


def test_gmm_init(gmm, data):
  ev, init, _ = gmm
  p = init["params"]
  np.testing.assert_array_equal(p["logits"], np.zeros(3))
  # Means start at training points (in normalised units).
  means = np.asarray(p["means"]) * np.asarray(GMM_SCALE) + np.asarray(GMM_LOC)
  dist = np.abs(means[:, None, :] - data[None]).max(-1).min(-1)
  np.testing.assert_allclose(dist, 0.0, atol=1e-5)
  np.testing.assert_allclose(np.asarray(p["chol_raw"]),
                             np.broadcast_to(np.log(0.2) * np.eye(2), (3, 2, 2)),
                             atol=1e-6)
  assert np.all(np.isfinite(ev.log_prob(init, data[:10])))


def test_gmm_log_prob_matches_numpy_mixture(gmm):
  ev, _, variables = gmm
  weights, means, covs = _gmm_components()
  x = np.random.default_rng(3).uniform([-4, -2], [4, 3], (1000, 2)).astype(np.float32)
  comp = np.stack([stats.multivariate_normal(m, c).logpdf(x.astype(np.float64))
                   for m, c in zip(means, covs)], -1)
  expected = special.logsumexp(comp + np.log(weights), axis=-1)
  np.testing.assert_allclose(ev.log_prob(variables, x), expected, rtol=1e-5, atol=1e-4)


def _gmm_box(num_sd):
  _, means, covs = _gmm_components()
  sd = np.sqrt(np.diagonal(covs, axis1=1, axis2=2))
  return (means - num_sd * sd).min(0), (means + num_sd * sd).max(0)


def test_gmm_integrates_to_one(gmm):
  ev, _, variables = gmm
  total = probability.integrate_2d(ev.density(variables), *_gmm_box(8), num=512)
  assert total == pytest.approx(1.0, abs=0.01)


def test_gmm_samples_match_density(gmm):
  ev, _, variables = gmm
  samples = ev.sample(variables, seed=4)
  assert chi_square_pvalue(samples, ev.density(variables), *_gmm_box(3), bins=10) > 1e-3
  # The sample mean against the mixture's closed-form mean and covariance.
  weights, means, covs = _gmm_components()
  mix_mean = weights @ means
  second = covs + np.einsum("ki,kj->kij", means, means)
  mix_cov = np.einsum("k,kij->ij", weights, second) - np.outer(mix_mean, mix_mean)
  np.testing.assert_allclose(samples.mean(0), mix_mean,
                             atol=4 * np.sqrt(np.diag(mix_cov)).max() / np.sqrt(len(samples)))


# --- registry -------------------------------------------------------------------


def _identifiable_params(model, variables, x):
  """Rank of d log_prob(x_i) / d params over many points: the directions that matter."""
  flat, unravel = jax.flatten_util.ravel_pytree(variables["params"])
  jac = jax.jacfwd(lambda f: model.apply({"params": unravel(f)}, x, method="log_prob"))(flat)
  return np.linalg.matrix_rank(np.asarray(jac, np.float64), tol=1e-4 * np.abs(jac).max())


def test_num_params_counts_degrees_of_freedom(gaussian, gmm):
  """The reported count equals the rank of the log-density's Jacobian in the params."""
  (_, ev, variables), (gmm_ev, _, gmm_vars) = gaussian, gmm
  for e, v in ((ev, variables), (gmm_ev, gmm_vars)):
    x = jnp.asarray(e.sample(v)[:1000], jnp.float32)  # Where every component matters.
    assert experiment.num_params(v["params"], e.model) == _identifiable_params(e.model, v, x)


def test_registry_builds_every_model_and_rejects_unknown():
  assert isinstance(models.get_density_model("box"), density.UniformBox)
  diag = models.get_density_model("gaussian_diag", scale=(1.0, 1.0))
  assert isinstance(diag, density.Gaussian) and diag.diagonal
  assert not models.get_density_model("gaussian_full").diagonal
  assert models.get_density_model("gmm", num_components=5).num_components == 5
  assert set(models.cards()) >= {"realnvp", "spline_flow"}
  with pytest.raises(ValueError, match="unknown density model"):
    models.get_density_model("nope")
