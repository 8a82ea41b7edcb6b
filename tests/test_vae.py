"""The VAE (genmodels.models.vae): its Gaussians, its bounds and the engine's conventions.

The bounds are checked on the one VAE whose marginal is closed form, the
linear-Gaussian VAE p(u) = N(u; b, W W^T + sigma^2 I): with the exact posterior
as q the ELBO and the IWAE bound equal log p(x) for every K; with a wrong q the
ELBO lies below and the IWAE bound climbs to log p(x) as K grows. Models are
tiny and shapes fixed so each function compiles once.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import special
from scipy import stats

from genmodels.density import task
from genmodels.numerics import gaussians
from genmodels.models import vae
from genmodels.training import optim
from genmodels.training import steps

LO, HI = (-180.0, -90.0), (180.0, 90.0)
LIN_LO, LIN_HI = (-3.0, 1.0), (5.0, 2.0)  # a box that is not symmetric: tests the Jacobian


def _points(n, seed=0, lo=LO, hi=HI):
  rng = np.random.default_rng(seed)
  lo, hi = np.asarray(lo), np.asarray(hi)
  return jnp.asarray(lo + (hi - lo) * rng.beta(2.0, 3.0, size=(n, 2)), jnp.float32)


def _perturb(params, seed, scale):
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda p: jnp.asarray(np.asarray(p) + scale * rng.normal(size=np.shape(p)), p.dtype),
      params)


# Gaussian helpers against scipy ---------------------------------------------------


@pytest.mark.parametrize("full", [True, False])
def test_gaussian_helpers_match_scipy(full):
  rng = np.random.default_rng(1)
  dim = 3
  raw = rng.normal(size=(5, gaussians.num_cholesky_params(dim, full))).astype(np.float32)
  chol = np.asarray(gaussians.cholesky_from_raw(jnp.asarray(raw), dim, full, 0.1), np.float64)
  assert np.allclose(np.triu(chol, 1), 0.0)
  assert np.all(np.diagonal(chol, axis1=-2, axis2=-1) > 0.1)
  if not full:
    assert np.allclose(chol, np.eye(dim) * np.diagonal(chol, axis1=-2, axis2=-1)[:, None])
  mean = rng.normal(size=(5, dim))
  x = rng.normal(size=(5, dim))
  got = np.asarray(gaussians.gaussian_log_prob(jnp.asarray(x, jnp.float32),
                                         jnp.asarray(mean, jnp.float32),
                                         jnp.asarray(chol, jnp.float32)))
  cov = chol @ np.swapaxes(chol, -1, -2)
  want = [stats.multivariate_normal(mean[i], cov[i]).logpdf(x[i]) for i in range(5)]
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  kl = np.asarray(gaussians.kl_to_standard_normal(jnp.asarray(mean, jnp.float32),
                                            jnp.asarray(chol, jnp.float32)))
  want_kl = [0.5 * (np.trace(cov[i]) + mean[i] @ mean[i] - dim
                    - np.log(np.linalg.det(cov[i]))) for i in range(5)]
  np.testing.assert_allclose(kl, want_kl, rtol=1e-4, atol=1e-4)


def test_gaussian_sample_has_the_covariance():
  chol = jnp.array([[0.5, 0.0], [0.3, 0.2]])
  z = gaussians.gaussian_sample(jax.random.key(0), jnp.array([1.0, -2.0]), chol, (200_000,))
  np.testing.assert_allclose(np.mean(np.asarray(z), 0), [1.0, -2.0], atol=0.01)
  np.testing.assert_allclose(np.cov(np.asarray(z).T), chol @ chol.T, atol=0.01)


# The linear-Gaussian VAE: closed-form marginal -------------------------------------


@functools.cache
def _linear():
  model = vae.LinearGaussianVAE(lo=LIN_LO, hi=LIN_HI, latent_dim=2,
                                iwae_samples=64, iwae_chunk=64)
  x = _points(512, seed=2, lo=LIN_LO, hi=LIN_HI)
  key = jax.random.key(0)
  params = model.init(key, x, key, method="training_loss")["params"]
  params = _perturb(params, 0, 0.8)  # a random W, b, sigma (sigma = softplus(raw))
  exact = vae.exact_posterior_params(params)
  # A wrong q: the exact posterior shifted, widened and sheared (wider than the
  # posterior, so the importance weights have finite variance).
  enc = exact["encoder"]
  wrong = {"mean": {"kernel": enc["mean"]["kernel"] * 1.1,
                    "bias": enc["mean"]["bias"] + jnp.array([0.05, -0.05])},
           "scale": enc["scale"] + jnp.array([0.6, 0.4, 0.3])}
  params = {**exact, "encoder": wrong}
  bound = jax.jit(lambda p, x, k, rng: model.apply({"params": p}, x, k, rng,
                                                   method="iwae_bound"),
                  static_argnums=2)
  elbo = jax.jit(lambda p, x, k, rng: model.apply({"params": p}, x, k, rng,
                                                  method="elbo"), static_argnums=2)
  marginal = jax.jit(lambda p, x: model.apply({"params": p}, x,
                                              method="marginal_log_prob"))
  return model, x, params, exact, bound, elbo, marginal


def test_linear_marginal_is_the_closed_form_in_data_units():
  _, x, params, _, _, _, marginal = _linear()
  dec = params["decoder"]
  w = np.asarray(dec["mean"]["kernel"], np.float64).T
  b = np.asarray(dec["mean"]["bias"], np.float64)
  sigma = np.log1p(np.exp(float(dec["scale"])))
  loc = (np.asarray(LIN_LO) + np.asarray(LIN_HI)) / 2
  half = (np.asarray(LIN_HI) - np.asarray(LIN_LO)) / 2
  # x = loc + half * u, u ~ N(b, W W^T + sigma^2 I).
  cov = np.diag(half) @ (w @ w.T + sigma ** 2 * np.eye(2)) @ np.diag(half)
  want = stats.multivariate_normal(loc + half * b, cov).logpdf(np.asarray(x, np.float64))
  np.testing.assert_allclose(np.asarray(marginal(params, x)), want, rtol=1e-5, atol=1e-4)


def test_exact_posterior_makes_every_bound_exact():
  _, x, _, exact, bound, elbo, marginal = _linear()
  want = np.asarray(marginal(exact, x))
  for k in (1, 64):
    np.testing.assert_allclose(np.asarray(bound(exact, x, k, jax.random.key(k))), want,
                               atol=2e-4)
  np.testing.assert_allclose(np.asarray(elbo(exact, x, 64, jax.random.key(3))), want,
                             atol=2e-4)


def test_with_a_wrong_posterior_elbo_is_below_and_iwae_climbs_to_log_p():
  _, x, params, _, bound, elbo, marginal = _linear()
  log_p = float(np.mean(marginal(params, x)))
  gaps = {}
  for k in (1, 4, 16, 64, 256, 1024, 4096):
    # Average over independent draws: E[L_K] rises with K.
    vals = [float(np.mean(bound(params, x, k, jax.random.key(100 * k + r))))
            for r in range(4 if k <= 256 else 1)]
    gaps[k] = log_p - np.mean(vals)
  assert gaps[1] > 0.1, gaps  # q is not the posterior: a loose ELBO
  ks = (1, 4, 16, 64)  # beyond 64 the gap is below the Monte Carlo noise
  assert all(gaps[a] > gaps[b] > 0 for a, b in zip(ks, ks[1:])), gaps
  assert all(abs(gaps[k]) < 0.01 * gaps[1] for k in (256, 1024, 4096)), gaps
  # The K-sample ELBO (mean of the same log-weights) is below the IWAE bound
  # point by point, and it is an unbiased estimate of the single-sample ELBO.
  key = jax.random.key(7)
  e, b = np.asarray(elbo(params, x, 64, key)), np.asarray(bound(params, x, 64, key))
  assert np.all(e <= b + 1e-5)
  np.testing.assert_allclose(np.mean(e), log_p - gaps[1], atol=0.05 * gaps[1])


def test_linear_training_loss_is_minus_the_elbo():
  model, x, params, exact, _, _, marginal = _linear()
  # With the exact posterior the ELBO is log p(x); the single-sample estimate
  # (analytic KL) is unbiased, so its average over draws matches.
  loss_fn = jax.jit(lambda p, k: model.apply({"params": p}, x, k, method="training_loss"))
  losses = [float(loss_fn(exact, jax.random.key(s))[0]) for s in range(16)]
  np.testing.assert_allclose(-np.mean(losses), float(np.mean(marginal(exact, x))),
                             atol=0.01)
  loss, metrics = loss_fn(exact, jax.random.key(0))
  np.testing.assert_allclose(float(metrics["elbo"]), -float(loss))
  np.testing.assert_allclose(float(metrics["reconstruction"] - metrics["kl"]),
                             float(metrics["elbo"]), atol=1e-5)
  # A wrong posterior: the single-sample ELBO is below log p on average.
  losses = [float(loss_fn(params, jax.random.key(s))[0]) for s in range(16)]
  assert -np.mean(losses) < float(np.mean(marginal(params, x))) - 0.1


# The world-map VAE: the engine's conventions -----------------------------------------


@functools.cache
def _small():
  model = vae.VAE(hidden=16, encoder_depth=1, decoder_depth=2, num_frequencies=3,
                  latent_frequencies=3, iwae_samples=48, iwae_chunk=16)
  x_all = _points(3000, seed=4)
  key = jax.random.key(0)
  variables = jax.jit(model.init, static_argnames="method")(
      key, x_all, key, method="training_loss")
  return model, x_all, variables


def test_vae_init_train_and_score_as_the_engine_does():
  model, x_all, variables = _small()
  assert set(variables) == {"params"}
  assert set(variables["params"]) == {"encoder", "decoder"}
  # load_density initialises through log_prob: the same parameter shapes.
  by_log_prob = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((4, 2)),
                                                  method="log_prob"))
  assert (jax.tree.map(jnp.shape, by_log_prob) == jax.tree.map(jnp.shape, variables))
  # The engine's loss and a few of its train steps (block of one optimizer).
  loss_fn = task.density_loss(model)
  tx = optim.make(optim.optimizer_config(name="adamw", learning_rate=3e-3,
                                         schedule="warmup_cosine", warmup_steps=2,
                                         grad_clip=1.0), 30)
  state = steps.create_train_state(variables, tx)
  multi = jax.jit(steps.make_multi_step(loss_fn))
  idx = jnp.asarray(np.random.default_rng(0).integers(0, len(x_all), (30, 128)))
  new_state, metrics = multi(state, {"x": x_all}, idx, jax.random.key(1))
  assert bool(np.all(metrics["finite"]))
  assert set(metrics) >= {"elbo", "kl", "reconstruction", "loss"}
  np.testing.assert_allclose(metrics["loss"], -metrics["elbo"], rtol=1e-6)
  assert np.mean(metrics["loss"][-5:]) < np.mean(metrics["loss"][:5])
  # Scoring: params only, no rng for log_prob (deterministic).
  params = new_state.params
  log_prob = jax.jit(lambda p, x: model.apply({"params": p}, x, method="log_prob"))
  lp = np.asarray(log_prob(params, x_all[:100]))
  assert lp.shape == (100,) and np.all(np.isfinite(lp))
  np.testing.assert_array_equal(lp, np.asarray(log_prob(params, x_all[:100])))
  e = np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x, method="elbo"))(
      params, x_all[:100]))
  assert np.all(e <= lp + 1e-5)
  sample = jax.jit(lambda p, k: model.apply({"params": p}, k, 1000, method="sample"))
  s = np.asarray(sample(params, jax.random.key(2)))
  assert s.shape == (1000, 2) and np.all(np.isfinite(s))


def test_chunking_does_not_change_the_bound():
  model, x_all, variables = _small()
  x = x_all[:64]
  a = model.apply(variables, x, 48, method="iwae_bound")
  b = model.clone(iwae_chunk=48).apply(variables, x, 48, method="iwae_bound")
  c = model.clone(iwae_chunk=5).apply(variables, x, 48, method="iwae_bound")  # ragged
  assert np.all(np.isfinite(np.asarray(c)))
  # Different chunkings draw different samples: equal only on average.
  np.testing.assert_allclose(np.mean(a), np.mean(b), atol=0.05)
  np.testing.assert_allclose(np.mean(a), np.mean(c), atol=0.05)
  lw = model.apply(variables, x, jax.random.key(0), 48, method="log_weights")
  np.testing.assert_allclose(a, special.logsumexp(np.asarray(lw, np.float64), 0)
                             - np.log(48), rtol=1e-5, atol=1e-5)


def test_a_fresh_vae_starts_at_the_identity():
  """Encoder mean sqrt(2) erfinv(u), decoder mean erf(z / sqrt 2): they invert."""
  model, x_all, variables = _small()
  u = model.to_unit(x_all[:200])
  enc = model.apply(variables, u, method=lambda m, u: m.encoder(u))
  dec = model.apply(variables, enc[0], method=lambda m, z: m.decoder(z))
  np.testing.assert_allclose(np.asarray(dec[0]), np.asarray(u), atol=1e-4)
  np.testing.assert_allclose(np.asarray(enc[1][:, 0, 0]), model.encoder_init_scale,
                             rtol=1e-5)
  np.testing.assert_allclose(np.asarray(dec[1][:, 0, 0]), model.decoder_init_scale,
                             rtol=1e-5)
  # Its samples are close to uniform on the box.
  s = np.asarray(model.apply(variables, jax.random.key(5), 20_000, method="sample"))
  for i in range(2):
    v = (s[:, i] - LO[i]) / (HI[i] - LO[i])
    assert stats.kstest(np.clip(v, 0, 1), "uniform").statistic < 0.03
