"""The subscription data set and the classifiers with and without activations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genmodels.data import tabular as data
from genmodels.networks import tabular as models

VISITS = np.arange(data.MAX_VISITS + 1)
SHARES = np.asarray(data.JOB_SHARES)


def _population():
  """Every (job, visits) cell with its exact probability mass."""
  job, visits = np.meshgrid(np.arange(len(data.JOB_TITLES)), VISITS, indexing="ij")
  mass = SHARES[:, None] * np.full(job.shape, 1.0 / len(VISITS))
  return job.ravel(), visits.ravel(), mass.ravel()


def test_neither_feature_alone_predicts_exactly():
  job, visits, mass = _population()
  p = data.subscribe_probability(job, visits)
  for j in range(len(data.JOB_TITLES)):  # P(subscribe | job) = 1/2.
    sel = job == j
    np.testing.assert_allclose(np.sum(p[sel] * mass[sel]) / mass[sel].sum(), 0.5,
                               atol=1e-12)
  for v in VISITS:  # P(subscribe | visits) = 1/2.
    sel = visits == v
    np.testing.assert_allclose(np.sum(p[sel] * mass[sel]) / mass[sel].sum(), 0.5,
                               atol=1e-12)


def test_together_they_do():
  p = data.subscribe_probability
  assert p(data.ML_ENGINEER, data.MAX_VISITS) > 0.95
  assert p(data.ML_ENGINEER, 0) < 0.05
  for other in range(1, len(data.JOB_TITLES)):
    assert p(other, data.MAX_VISITS) < 0.2 < 0.8 < p(other, 0)
  job, visits, _ = _population()
  probs = p(job, visits)
  assert probs.min() > 0.01 and probs.max() < 0.99


def test_constant_half_is_the_best_linear_model():
  """The logistic score equations E[(y - 1/2) x] = 0 hold at logit 0 for the
  model's features (one-hot job, scaled visits): by convexity, no linear model
  beats the constant 1/2 on the population."""
  job, visits, mass = _population()
  x = data.features(job, visits).astype(np.float64)
  residual = data.subscribe_probability(job, visits) - 0.5
  score = np.sum(mass[:, None] * residual[:, None] * x, axis=0)
  np.testing.assert_allclose(score, 0.0, atol=1e-12)


def test_sample_is_deterministic_and_well_formed():
  a = data.sample(2000, seed=3)
  b = data.sample(2000, seed=3)
  for u, v in zip(a, b):
    np.testing.assert_array_equal(u, v)
  assert a.x.shape == (2000, data.NUM_FEATURES) and a.x.dtype == np.float32
  np.testing.assert_array_equal(a.x[:, :5].sum(1), 1.0)
  assert a.x[:, 5].min() >= -1 and a.x[:, 5].max() <= 1
  test = data.sample(2000, seed=3, split="test")
  assert not np.array_equal(a.job, test.job)
  assert set(np.unique(a.label)) == {0, 1}
  rates = data.marginal_rates(data.sample(50_000, seed=0))
  for key in ("ml_engineer", "other_jobs", "many_visits", "few_visits"):
    assert abs(rates[key] - 0.5) < 0.03, (key, rates)
  assert rates["ml_engineer_and_many_visits"] > 0.85


def test_bad_inputs():
  with pytest.raises(ValueError, match="positive"):
    data.sample(0)
  with pytest.raises(ValueError, match="split"):
    data.sample(10, split="dev")
  with pytest.raises(ValueError, match="job indices"):
    data.features([7], [3])


def test_deep_linear_is_one_matrix_with_a_constant_jacobian():
  """Stacked dense layers without activations compose to x W + b exactly, and
  the gradient of the output is that W wherever it is taken."""
  model = models.DeepLinear(hidden=(16, 8, 4))
  x = np.random.default_rng(1).normal(size=(64, 6)).astype(np.float32) * 3.0

  @jax.jit
  def run(key, x):
    variables = model.init(key, x[:1])
    jac = jax.vmap(jax.grad(lambda xi: model.apply(variables, xi[None])[0]))(x)
    return variables, model.apply(variables, x), jac

  variables, out, jac = run(jax.random.key(0), x)
  w, b = models.compose(variables["params"])
  assert w.shape == (6, 1) and b.shape == (1,)
  np.testing.assert_allclose(out, (x @ w + b)[:, 0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(jac, np.broadcast_to(w[:, 0], jac.shape), atol=1e-5)


def test_mlp_jacobian_is_not_constant():
  model = models.MLP(hidden=(16, 16))
  x = np.random.default_rng(2).normal(size=(8, 6)).astype(np.float32) * 2.0

  @jax.jit
  def jacobian(key, x):
    variables = model.init(key, x[:1])
    return jax.vmap(jax.grad(lambda xi: model.apply(variables, xi[None])[0]))(x)

  jac = jacobian(jax.random.key(0), x)
  assert float(jnp.max(jnp.abs(jac - jac[0]))) > 1e-2


def test_same_layers_same_parameter_count():
  def count(model):
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 6)))
    return sum(np.prod(p.shape) for p in jax.tree.leaves(shapes))
  assert count(models.DeepLinear((32, 32))) == count(models.MLP((32, 32))) == 1313
  logistic = models.DeepLinear(hidden=())
  assert jax.eval_shape(logistic.apply, jax.eval_shape(
      logistic.init, jax.random.key(0), jnp.ones((3, 6))), jnp.ones((3, 6))).shape == (3,)
  with pytest.raises(ValueError, match="unknown tabular model"):
    models.get_tabular_model("cnn")
