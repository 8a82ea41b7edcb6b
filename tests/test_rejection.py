"""Rejection sampling by a density ratio: it samples the target, in one shape."""

import jax
import jax.numpy as jnp
import numpy as np

from genmodels.numerics import rejection


def _normal(key, m):
  return jax.random.normal(key, (m, 1))


def test_a_shifted_gaussian_from_standard_normal_proposals():
  """Proposals N(0, 1) kept by the exact log ratio log N(x; 1, 1) / N(x; 0, 1)
  = x - 1/2 give N(1, 1): mean, spread and a tail probability (standard errors
  at n = 200,000: 0.002 for the moments, 0.001 for the tail)."""
  n = 200_000
  x = np.asarray(jax.jit(lambda k: rejection.rejection_sample(
      k, _normal, lambda x: x[:, 0] - 0.5, n, quantile=1.0))(jax.random.key(0)))[:, 0]
  assert x.shape == (n,) and np.isfinite(x).all()
  assert abs(x.mean() - 1.0) < 0.01 and abs(x.std() - 1.0) < 0.01
  assert abs(np.mean(x > 2.0) - 0.158655) < 0.005  # P(N(1, 1) > 2) = 1 - Phi(1)
  # The proposals alone are N(0, 1): the reweighting did the shift.
  plain = np.asarray(_normal(jax.random.key(0), n))[:, 0]
  assert abs(plain.mean()) < 0.01


def test_a_quantile_bound_clips_only_the_top_weights():
  """M at the 0.999 quantile: the top 0.1% of weights are accepted with
  probability 1 instead of more; the target's mean moves by well under 0.05."""
  x = np.asarray(rejection.rejection_sample(
      jax.random.key(1), _normal, lambda x: x[:, 0] - 0.5, 100_000, quantile=0.999))
  assert 0.95 < x.mean() < 1.0  # slightly pulled toward the proposals' mean 0


def test_exactly_n_rows_deterministic_and_never_stuck():
  sample = lambda key, w, rounds=10_000: np.asarray(rejection.rejection_sample(
      key, _normal, w, 1000, max_rounds=rounds))
  a, b = sample(jax.random.key(2), lambda x: x[:, 0]), sample(jax.random.key(2), lambda x: x[:, 0])
  assert a.shape == (1000, 1) and np.array_equal(a, b)
  assert not np.array_equal(a, sample(jax.random.key(3), lambda x: x[:, 0]))
  # A weight that accepts nothing stops after max_rounds with plain proposals.
  c = sample(jax.random.key(2), lambda x: jnp.where(jnp.isnan(x[:, 0]), 0.0, -jnp.inf), 3)
  assert c.shape == (1000, 1) and np.isfinite(c).all()
