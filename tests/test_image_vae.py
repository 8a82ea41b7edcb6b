"""The image VAE (genmodels.images.vae): its discrete likelihoods, its bounds
against the exact marginal, and the engine's conventions.

With latent_dim = 1 on 2x2 images with 4 levels the marginal
p(x) = integral N(z) p(x | z) dz is computed by fine quadrature for all
4^4 = 256 images, so the bounds are checked against log p(x) itself.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import special

from genmodels.errors import UsageError
from genmodels.images import vae

K = 4
SHAPE = (2, 2, 1)
ALL = jnp.asarray(list(itertools.product(range(K), repeat=4)), jnp.int32).reshape(-1, *SHAPE)


def _model(**kw):
  return vae.CARD.make(num_levels=kw.pop("num_levels", K), image_shape=kw.pop("image_shape", SHAPE),
                       **{"latent_dim": 1, "filters": (4,), **kw})


def _init(model, x, seed=0, scale=1.0):
  v = model.init(jax.random.key(seed), x, jax.random.key(1), method="training_loss")
  # Larger weights: a decoder that depends strongly on z, a posterior far from it.
  return jax.tree.map(lambda p: p * scale, v)


@pytest.fixture(scope="module")
def small():
  """A 1-D-latent VAE on 2x2x4 images and its exact log p(x) for all 256 images
  (quadrature on a grid of 801 points over z in [-8, 8])."""
  model = _model()
  v = _init(model, ALL, scale=1.5)
  z = jnp.linspace(-8.0, 8.0, 801)
  log_lik = jax.jit(lambda z: model.apply(v, jnp.broadcast_to(z[:, None, None], (z.shape[0], 256, 1)),
                                          ALL, method="decoder_log_prob"))(z)  # [Z, 256]
  log_w = np.asarray(log_lik, np.float64) + (-0.5 * np.asarray(z, np.float64) ** 2
                                             - 0.5 * np.log(2 * np.pi))[:, None]
  log_p = special.logsumexp(log_w, 0) + np.log(float(z[1] - z[0]))
  return model, v, log_p


# The likelihoods --------------------------------------------------------------------


def test_categorical_decoder_sums_to_one_over_all_images(small):
  model, v, _ = small
  z = jnp.asarray([-3.0, 0.0, 1.7])[:, None, None] * jnp.ones((3, 256, 1))
  log_lik = model.apply(v, z, ALL, method="decoder_log_prob")  # [3, 256]
  np.testing.assert_allclose(np.exp(special.logsumexp(np.asarray(log_lik, np.float64), 1)),
                             1.0, atol=1e-5)
  extreme = jnp.asarray([[1e4, -1e4, 0.0, 3e4]])
  lp = vae.categorical_log_prob(jnp.repeat(extreme, 4, 0), jnp.arange(4))
  assert np.all(np.isfinite(lp) | (np.asarray(lp) == -np.inf)) and not np.any(np.isnan(lp))
  assert float(lp[3]) == 0.0


def _logistic_reference(logits, means, log_scales, levels, k):
  """The mixture's mass by direct CDF differences in float64."""
  log_scales = np.clip(log_scales, *vae.LOG_SCALE_RANGE)
  c = 2 * levels / (k - 1) - 1
  hi = np.where(levels == k - 1, np.inf, c + 1 / (k - 1))[..., None]
  lo = np.where(levels == 0, -np.inf, c - 1 / (k - 1))[..., None]
  cdf = lambda t: special.expit((t - means) / np.exp(log_scales))
  return np.sum(special.softmax(logits, -1) * (cdf(hi) - cdf(lo)), -1)


@pytest.mark.parametrize("num_levels", [256, 4])
def test_discretized_logistic_mixture_sums_to_one(num_levels):
  rng = np.random.default_rng(0)
  m = 3
  # Ordinary parameters, then extreme means, extreme log-scales and extreme logits.
  params = rng.normal(size=(4, 3 * m))
  params[1, m:2 * m] = [1e4, -1e4, 0.5]
  params[2, 2 * m:] = [-100.0, 100.0, -7.5]
  params[3, :m] = [1e4, -1e4, 0.0]
  levels = jnp.arange(num_levels)
  p = jnp.asarray(params, jnp.float32)[:, None, :] * jnp.ones((1, num_levels, 1))
  lp = vae.logistic_mixture_log_prob(p, jnp.broadcast_to(levels, (4, num_levels)), num_levels)
  assert not np.any(np.isnan(lp)) and np.all(np.asarray(lp) <= 1e-6)
  np.testing.assert_allclose(np.exp(special.logsumexp(np.asarray(lp, np.float64), 1)),
                             1.0, atol=2e-5)
  ref = _logistic_reference(params[0, :m], params[0, m:2 * m], params[0, 2 * m:],
                            np.arange(num_levels), num_levels)
  np.testing.assert_allclose(np.exp(np.asarray(lp[0], np.float64)), ref, atol=1e-6, rtol=1e-4)
  grad = jax.grad(lambda q: jnp.sum(vae.logistic_mixture_log_prob(
      q, jnp.broadcast_to(levels, (4, num_levels)), num_levels)))(p)
  assert np.all(np.isfinite(grad))
  # Its sampler draws from that mass (K = 4: 40,000 draws of one pixel).
  if num_levels == 4:
    draws = vae.sample_logistic_mixture(jax.random.key(0),
                                        jnp.broadcast_to(p[0, :1], (40_000, 3 * m)), 4)
    freq = np.bincount(np.asarray(draws), minlength=4) / 40_000
    np.testing.assert_allclose(freq, np.exp(np.asarray(lp[0], np.float64)), atol=0.01)
    mean = vae.logistic_mixture_mean(p[0, :1], 4)
    np.testing.assert_allclose(float(mean[0]), np.sum(np.arange(4) * ref), atol=1e-4)


# The bounds against the exact marginal ------------------------------------------


def test_exact_marginal_is_a_distribution_and_bounds_it(small):
  model, v, log_p = small
  np.testing.assert_allclose(np.exp(special.logsumexp(log_p)), 1.0, atol=1e-4)
  bound = jax.jit(lambda s, k: model.apply(v, ALL, k, s, method="iwae_bound"), static_argnums=1)
  seeds = range(4)
  means = {k: np.mean([np.asarray(bound(s, k)) for s in seeds]) for k in (1, 4, 32, 256)}
  elbo_fn = jax.jit(lambda s: model.apply(v, ALL, 64, s, method="elbo"))
  elbo = np.mean([np.asarray(elbo_fn(s)) for s in seeds])
  exact = float(np.mean(log_p))
  gap = exact - elbo
  assert gap > 0.05  # the posterior is wrong enough for the bounds to differ
  np.testing.assert_allclose(means[1], elbo, atol=0.1 * gap)  # L_1 is the ELBO
  ks = sorted(means)
  for a, b in zip(ks, ks[1:]):
    assert means[a] <= means[b] + 0.01 * gap, means
  assert means[256] <= exact + 0.02 * gap
  assert exact - means[256] < 0.25 * gap  # L_K climbs most of the way to log p(x)


def test_analytic_kl_matches_monte_carlo():
  model = _model(latent_dim=3)
  v = _init(model, ALL, seed=3, scale=2.0)
  x = ALL[::37]
  mean, chol = model.apply(v, x, method="posterior")
  sigma2 = np.asarray(jnp.diagonal(chol, axis1=-2, axis2=-1), np.float64) ** 2
  mu = np.asarray(mean, np.float64)
  closed = 0.5 * np.sum(sigma2 + mu ** 2 - 1 - np.log(sigma2), -1)
  z = mu + np.sqrt(sigma2) * np.random.default_rng(0).normal(size=(200_000, *mu.shape))
  log_q = np.sum(-0.5 * (z - mu) ** 2 / sigma2 - 0.5 * np.log(2 * np.pi * sigma2), -1)
  log_prior = np.sum(-0.5 * z ** 2 - 0.5 * np.log(2 * np.pi), -1)
  mc = np.mean(log_q - log_prior, 0)
  np.testing.assert_allclose(mc, closed, atol=0.02 + 0.01 * float(closed.max()))
  _, metrics = model.apply(v, x, jax.random.key(0), method="training_loss")
  np.testing.assert_allclose(float(metrics["kl"]), np.mean(closed), rtol=1e-4)
  np.testing.assert_allclose(float(metrics["elbo"]), float(metrics["recon"] - metrics["kl"]),
                             rtol=1e-5)


# Samples, determinism, the edges -------------------------------------------------


def test_samples_follow_the_exact_marginal(small):
  model, v, log_p = small
  x = model.apply(v, jax.random.key(5), 20_000, method="sample")
  assert x.dtype == jnp.int32 and x.shape == (20_000, *SHAPE)
  assert int(x.min()) >= 0 and int(x.max()) < K
  index = np.asarray(x).reshape(-1, 4) @ (K ** np.arange(3, -1, -1))
  freq = np.bincount(index, minlength=256) / 20_000
  assert 0.5 * np.abs(freq - np.exp(log_p)).sum() < 0.06  # total variation


def test_log_prob_is_deterministic_per_image_and_refuses_bad_images(small):
  model, v, _ = small
  lp = jax.jit(lambda x: model.apply(v, x, method="log_prob"))
  x = ALL[:16]
  a = np.asarray(lp(x))
  np.testing.assert_array_equal(a, np.asarray(lp(x)))
  np.testing.assert_array_equal(a[::-1], np.asarray(lp(x[::-1])))  # not the batch's
  bad = x.at[0, 0, 0, 0].set(K).at[1, 1, 1, 0].set(-1)
  got = np.asarray(lp(bad))
  assert got[0] == -np.inf and got[1] == -np.inf and np.array_equal(got[2:], a[2:])
  f = model.apply(v, x.astype(jnp.float32).at[0, 0, 0, 0].set(0.5), method="log_prob")
  assert float(f[0]) == -np.inf and not np.any(np.isnan(f))
  metrics = model.apply(v, x, method="eval_metrics")
  np.testing.assert_allclose(metrics["nll"], -a, rtol=1e-6)
  assert np.all(np.asarray(metrics["neg_elbo"]) >= np.asarray(metrics["nll"]) - 1e-5)


@pytest.mark.slow
def test_logistic_decoder_shapes_and_range_28x28():
  model = vae.CARD.make(num_levels=256, image_shape=(28, 28, 1), filters=(2, 2, 2),
                        num_logistics=2, num_importance_samples=2)
  assert model.likelihood == "logistic_mixture"
  x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 28, 28, 1)), jnp.int32)
  v = _init(model, x)

  @jax.jit
  def outputs(v):
    return (model.apply(v, jax.random.key(0), 3, method="sample"),
            model.apply(v, x, method="encode"),
            model.apply(v, jnp.zeros((1, 2)), method="decode_mean"),
            model.apply(v, x, method="log_prob"))

  s, z, mean, lp = outputs(v)
  assert s.dtype == jnp.int32 and s.shape == (3, 28, 28, 1)
  assert 0 <= int(s.min()) and int(s.max()) <= 255
  assert z.shape == (2, 2) and np.all(np.isfinite(lp))
  assert mean.shape == (1, 28, 28, 1) and 0 <= float(mean.min()) and float(mean.max()) <= 255


def test_bad_fields_are_usage_errors():
  for kw in (dict(decoder="gaussian"), dict(conv_impl="cudnn"), dict(latent_dim=0)):
    with pytest.raises(UsageError):
      _init(_model(**kw), ALL[:2])


@pytest.mark.slow  # a training run / many compiles: the slow tier (.ci/run)
def test_im2col_and_xla_compute_the_same_function(small):
  model, v, _ = small
  xla = _model(conv_impl="xla")
  a = model.apply(v, ALL[:8], method="log_prob")
  b = xla.apply(v, ALL[:8], method="log_prob")
  np.testing.assert_allclose(a, b, rtol=1e-4)


# Training ---------------------------------------------------------------------------


@pytest.mark.slow  # a training run / many compiles: the slow tier (.ci/run)
def test_fifty_adam_steps_raise_the_elbo():
  rng = np.random.default_rng(0)
  protos = np.array([[0, 3, 3, 0], [3, 0, 0, 3]])
  data = protos[rng.integers(0, 2, 256)]
  flip = rng.random(data.shape) < 0.1
  data = np.where(flip, rng.integers(0, K, data.shape), data)
  x = jnp.asarray(data.reshape(-1, *SHAPE), jnp.int32)
  model = _model(latent_dim=2, filters=(8,))
  params = _init(model, x)["params"]
  opt = optax.adam(1e-2)

  def loss(p, key):
    return model.apply({"params": p}, x, key, method="training_loss")

  @jax.jit
  def run(p):
    def step(carry, i):
      p, s = carry
      g = jax.grad(lambda q: loss(q, jax.random.key(i))[0])(p)
      u, s = opt.update(g, s)
      return (optax.apply_updates(p, u), s), None
    return jax.lax.scan(step, (p, opt.init(p)), jnp.arange(50))[0][0]

  elbo = jax.jit(lambda p: jnp.mean(model.apply({"params": p}, x, 16, method="elbo")))
  before, after = float(elbo(params)), float(elbo(run(params)))
  assert after > before + 0.5, (before, after)
