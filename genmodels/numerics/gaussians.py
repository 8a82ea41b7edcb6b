"""Gaussians with a Cholesky factor, written for 2-D points and small latents.

The VAE's encoder and decoder emit a mean and a lower-triangular factor L of the
covariance L L^T (``scale_head``); these functions give the log-density (by
forward substitution), reparameterised samples and the closed-form KL to the
standard normal. Dimensions are small (2 to a few), so loops over them unroll.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
LOG_2PI = float(np.log(2 * np.pi))


def num_cholesky_params(dim: int, full: bool) -> int:
  return dim + (dim * (dim - 1) // 2 if full else 0)


def cholesky_from_raw(raw: Array, dim: int, full: bool, min_scale: float) -> Array:
  """Network outputs [..., P] -> lower-triangular L [..., dim, dim].

  The diagonal is min_scale + softplus(raw) (positive, bounded away from 0); a
  full factor also has the strictly lower entries raw.
  """
  diag = min_scale + jax.nn.softplus(raw[..., :dim])
  chol = diag[..., :, None] * jnp.eye(dim, dtype=raw.dtype)
  if full and dim > 1:
    rows, cols = np.tril_indices(dim, -1)
    chol = chol.at[..., rows, cols].set(raw[..., dim:])
  return chol


def scale_head(h: Array, dim: int, full: bool, min_scale: float,
               init_scale: float | None, name: str = "scale") -> Array:
  """A Dense layer from features h to a Cholesky factor [..., dim, dim].

  With ``init_scale`` its kernel starts at zero and its bias at L = init_scale * I.
  """
  num_raw = num_cholesky_params(dim, full)
  if init_scale is None:
    layer = nn.Dense(num_raw, name=name)
  else:
    bias = np.zeros(num_raw, np.float32)
    bias[:dim] = softplus_inverse(init_scale - min_scale)
    layer = nn.Dense(num_raw, kernel_init=nn.initializers.zeros,
                     bias_init=lambda *_: jnp.asarray(bias), name=name)
  return cholesky_from_raw(layer(h), dim, full, min_scale)


def gaussian_log_prob(x: Array, mean: Array, chol: Array) -> Array:
  """log N(x; mean, L L^T) for x, mean [..., D] and L [..., D, D] (forward substitution)."""
  r = x - mean
  dim = r.shape[-1]
  eps = []
  for i in range(dim):
    e = r[..., i]
    for j in range(i):
      e = e - chol[..., i, j] * eps[j]
    eps.append(e / chol[..., i, i])
  eps = jnp.stack(eps, -1)
  log_det = jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), -1)
  return -0.5 * jnp.sum(eps ** 2, -1) - log_det - 0.5 * dim * LOG_2PI


def gaussian_sample(rng: Array, mean: Array, chol: Array, shape=()) -> Array:
  """mean + L eps, eps ~ N(0, I), with extra leading ``shape``."""
  eps = jax.random.normal(rng, (*shape, *mean.shape), mean.dtype)
  return mean + jnp.einsum("...ij,...j->...i", chol, eps)


def kl_to_standard_normal(mean: Array, chol: Array) -> Array:
  """KL(N(mean, L L^T) || N(0, I)) in closed form, [...]."""
  log_det = jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), -1)
  return 0.5 * (jnp.sum(chol ** 2, (-2, -1)) + jnp.sum(mean ** 2, -1)
                - mean.shape[-1]) - log_det


def softplus_inverse(y: float) -> float:
  return float(y + np.log(-np.expm1(-y)))
