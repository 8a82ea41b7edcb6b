"""Core probability: likelihood, NLL, bits, KL to the truth, and quadrature.

Chapter 1's vocabulary, each as a function:

* a *density* p(x) is non-negative and integrates to 1 over the sample space
  (``integrate_2d`` checks that numerically);
* the *likelihood* of parameters theta given data x_1..x_N is prod_i p_theta(x_i);
  its log is the sum of log-densities (``log_likelihood``), and maximum
  likelihood estimation minimises the mean negative log-likelihood (``nll``);
* when the data density p_data is known, E_data[-log p_model] - H(p_data) is
  KL(p_data || p_model) >= 0 (``kl_to_truth``): how many nats per point the
  model wastes compared with the truth.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

LN2 = float(np.log(2.0))

LogProbFn = Callable[[jax.Array], jax.Array]


def log_likelihood(log_prob_fn: LogProbFn, x: jax.Array) -> jax.Array:
  """log L(theta | x_1..x_N) = sum_i log p_theta(x_i)."""
  return jnp.sum(log_prob_fn(x))


def nll(log_prob_fn: LogProbFn, x: jax.Array) -> jax.Array:
  """Mean negative log-likelihood per point, in nats: the MLE objective."""
  return -jnp.mean(log_prob_fn(x))


def nats_to_bits(nats):
  return nats / LN2


def kl_to_truth(test_nll: float, true_entropy: float) -> float:
  """KL(p_data || p_model) = E_data[-log p_model] - H(p_data), in nats.

  Estimated with held-out points, so it is unbiased but noisy; it is +inf when
  the model gives zero density to a point that the data can produce.
  """
  return float(test_nll) - float(true_entropy)


def gaussian_entropy(cov: np.ndarray) -> float:
  """Differential entropy of a D-dim Gaussian: 0.5 * log det(2 pi e cov)."""
  cov = np.atleast_2d(cov)
  d = cov.shape[0]
  return 0.5 * (d * np.log(2 * np.pi * np.e) + np.linalg.slogdet(cov)[1])


def integrate_2d(density_fn: Callable[[np.ndarray], np.ndarray],
                 lo: tuple[float, float], hi: tuple[float, float],
                 num: int = 1024, chunk: int = 1 << 16) -> float:
  """Integral of a 2-D density over the box [lo, hi] by the midpoint rule.

  ``density_fn`` maps points [M, 2] to densities [M] (not log-densities). The
  midpoint rule converges for densities with jumps (a uniform box, coastlines),
  where higher-order rules lose their order anyway. The grid is evaluated in
  chunks so fine grids fit in memory.
  """
  lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
  h = (hi - lo) / num
  xs = lo[0] + h[0] * (np.arange(num) + 0.5)
  ys = lo[1] + h[1] * (np.arange(num) + 0.5)
  grid = np.stack(np.meshgrid(xs, ys, indexing="ij"), -1).reshape(-1, 2)
  total = 0.0
  for start in range(0, len(grid), chunk):
    vals = np.asarray(density_fn(grid[start:start + chunk]), np.float64)
    total += float(np.sum(vals))
  return total * h[0] * h[1]


def integrate_1d(density_fn: Callable[[np.ndarray], np.ndarray],
                 lo: float, hi: float, num: int = 1 << 16) -> float:
  """Integral of a 1-D density over [lo, hi] by the midpoint rule."""
  h = (hi - lo) / num
  xs = lo + h * (np.arange(num) + 0.5)
  return float(np.sum(np.asarray(density_fn(xs), np.float64)) * h)
