"""Parametric density models for 2-D points: the bottom rungs of the ladder.

Every density model is a Flax linen module with two methods:

* ``log_prob(x)``: log-density of points x [N, D] (in data units, e.g. degrees);
* ``sample(rng, n)``: n points [n, D] from the model.

A model whose parameter arrays hold unused entries (the Gaussians' factors
are stored as full matrices) also defines ``num_free_params(params)``, so that
reported parameter counts are degrees of freedom.

``model.init(rng, x_train, method="log_prob")`` initialises the parameters *from
the training data* where that makes sense: the uniform box and the Gaussians
can start at their closed-form maximum-likelihood estimate (so they need no
training steps), and the mixture's means start at random training points.

Gradient-trained models work internally in normalised units u = (x - loc) /
scale, so that one learning rate suits all of them; the change of variables
adds -sum(log scale) to every log-density.
"""

from typing import Sequence

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from genmodels.models import base
from genmodels.models import fields
from genmodels.numerics import coords

Array = jax.Array
LOG_2PI = float(np.log(2 * np.pi))


class UniformBox(base.DensityModel):
  """Uniform density on an axis-aligned box: the book's naive model.

  Its MLE is closed form: the bounding box of the training data (any larger box
  has lower density everywhere, any smaller one gives some point density 0).
  Points outside the box get log-density -inf: a held-out point that falls
  outside is a real failure of the model and is counted, never hidden.
  """

  @nn.compact
  def __call__(self, x: Array) -> tuple[Array, Array]:
    lo = self.param("lo", lambda _: jnp.min(x, axis=0))
    hi = self.param("hi", lambda _: jnp.max(x, axis=0))
    return lo, hi

  def _box(self, x=None):
    return self(x if x is not None else jnp.zeros((1, 2)))

  def log_prob(self, x: Array) -> Array:
    lo, hi = self._box(x)
    inside = jnp.all((x >= lo) & (x <= hi), axis=-1)
    return jnp.where(inside, -jnp.sum(jnp.log(hi - lo)), -jnp.inf)

  def sample(self, rng: Array, n: int) -> Array:
    lo, hi = self._box()
    return jax.random.uniform(rng, (n, lo.shape[-1]), minval=lo, maxval=hi)


def _tril_from_raw(raw: Array) -> Array:
  """Lower-triangular factor with positive diagonal from an unconstrained matrix."""
  d = raw.shape[-1]
  tril = jnp.tril(raw, k=-1)
  return tril + jnp.exp(jnp.diagonal(raw, axis1=-2, axis2=-1))[..., None] * jnp.eye(d)


def _raw_from_tril(chol: Array) -> Array:
  d = chol.shape[-1]
  diag = jnp.diagonal(chol, axis1=-2, axis2=-1)
  return jnp.tril(chol, k=-1) + jnp.log(diag)[..., None] * jnp.eye(d)


def _mvn_log_prob(u: Array, mean: Array, chol: Array) -> Array:
  """log N(u; mean, L L^T) for u [N, D] and K components: mean [K, D], L [K, D, D]."""
  d = u.shape[-1]
  eye = jnp.broadcast_to(jnp.eye(d), chol.shape)
  chol_inv = jax.scipy.linalg.solve_triangular(chol, eye, lower=True)  # [K, D, D]
  z = jnp.einsum("kij,nkj->nki", chol_inv, u[:, None, :] - mean)  # [N, K, D]
  log_det = jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), -1)  # [K]
  return -0.5 * jnp.sum(z**2, -1) - log_det - 0.5 * d * LOG_2PI


class _Normalised(base.DensityModel):
  """Shared plumbing: a fixed affine map from data units to normalised units."""
  loc: Sequence[float] = (0.0, 0.0)
  scale: Sequence[float] = (180.0, 90.0)

  @property
  def affine(self) -> coords.Affine:
    return coords.Affine.standardise(self.loc, self.scale)

  def to_unit(self, x):
    return self.affine.to_unit(x)

  def from_unit(self, u):
    return self.affine.from_unit(u)

  @property
  def log_scale(self):
    return self.affine.log_det


class Gaussian(_Normalised):
  """Multivariate Gaussian, full or diagonal covariance.

  With ``init_from_data`` the parameters start at the closed-form MLE (sample
  mean and the biased sample covariance, or its diagonal); otherwise at the
  standard normal in normalised units, for fitting by gradient descent.
  """
  diagonal: bool = False
  init_from_data: bool = True

  @nn.compact
  def __call__(self, x: Array):
    fields.require(self, positive_real=("scale",))
    d = x.shape[-1]

    def init_mean(_):
      return jnp.mean(self.to_unit(x), 0) if self.init_from_data else jnp.zeros(d)

    def init_chol(_):
      if not self.init_from_data:
        return jnp.zeros((d, d))
      u = self.to_unit(x)
      cov = jnp.cov(u, rowvar=False, bias=True)
      if self.diagonal:
        cov = jnp.diag(jnp.diag(cov))
      return _raw_from_tril(jnp.linalg.cholesky(cov))

    mean = self.param("mean", init_mean)
    raw = self.param("chol_raw", init_chol)
    if self.diagonal:
      raw = jnp.diag(jnp.diag(raw))
    return mean, _tril_from_raw(raw)

  def _params(self, d=2):
    return self(jnp.zeros((1, d)))

  def num_free_params(self, params) -> int:
    """Degrees of freedom: the mean and the used entries of the factor."""
    d = params["mean"].shape[-1]
    return d + (d if self.diagonal else d * (d + 1) // 2)

  def mean_and_cov(self):
    """Mean and covariance in data units."""
    mean, chol = self._params()
    scale = jnp.asarray(self.scale)
    cov = chol @ chol.T
    return self.from_unit(mean), cov * scale[:, None] * scale[None, :]

  def log_prob(self, x: Array) -> Array:
    mean, chol = self(x)
    log_p = _mvn_log_prob(self.to_unit(x), mean[None], chol[None])[:, 0] - self.log_scale
    return coords.mask_log_prob(x, log_p)  # an infinite coordinate: -inf, not NaN

  def sample(self, rng: Array, n: int) -> Array:
    mean, chol = self._params()
    z = jax.random.normal(rng, (n, mean.shape[-1]))
    return self.from_unit(mean + z @ chol.T)


class GaussianMixture(_Normalised):
  """Mixture of K full-covariance Gaussians, fit by gradient MLE.

  The means start at K random training points and the covariances at
  ``init_scale`` squared times the identity (normalised units), which avoids the
  dead components a random start gives.
  """
  num_components: int = 64
  init_scale: float = 0.1

  @nn.compact
  def __call__(self, x: Array):
    fields.require(self, positive=("num_components",),
                   positive_real=("scale", "init_scale"))
    k, d = self.num_components, x.shape[-1]

    def init_means(rng):
      idx = jax.random.choice(rng, x.shape[0], (k,), replace=x.shape[0] < k)
      return self.to_unit(x)[idx]

    logits = self.param("logits", nn.initializers.zeros, (k,))
    means = self.param("means", init_means)
    raw = self.param(
        "chol_raw", lambda _: jnp.broadcast_to(
            jnp.log(self.init_scale) * jnp.eye(d), (k, d, d)))
    return logits, means, _tril_from_raw(raw)

  def _params(self, d=2):
    return self(jnp.zeros((1, d)))

  def num_free_params(self, params) -> int:
    """Degrees of freedom: K-1 weights, K means, K lower-triangular factors."""
    k, d = params["means"].shape
    return (k - 1) + k * d + k * d * (d + 1) // 2

  def log_prob(self, x: Array) -> Array:
    logits, means, chol = self(x)
    comp = _mvn_log_prob(self.to_unit(x), means, chol)  # [N, K]
    log_p = jax.nn.logsumexp(comp + jax.nn.log_softmax(logits), -1) - self.log_scale
    return coords.mask_log_prob(x, log_p)  # an infinite coordinate: -inf, not NaN

  def sample(self, rng: Array, n: int) -> Array:
    logits, means, chol = self._params()
    k_rng, z_rng = jax.random.split(rng)
    comp = jax.random.categorical(k_rng, logits, shape=(n,))
    z = jax.random.normal(z_rng, (n, means.shape[-1]))
    return self.from_unit(means[comp] + jnp.einsum("nij,nj->ni", chol[comp], z))


def _shrink_gmm(u):
  u.model.num_components = 8


BOX = base.ModelCard(
    "box", UniformBox, "tractable", "baseline", "uniform box",
    unit=base.density_unit, groups=("ladder", "taxonomy"))
GAUSSIAN_DIAG = base.ModelCard(
    "gaussian_diag", functools.partial(Gaussian, diagonal=True), "tractable",
    "baseline", "Gaussian, diagonal", unit=base.density_unit, fixed=("diagonal",),
    groups=("ladder", "taxonomy"))
GAUSSIAN_FULL = base.ModelCard(
    "gaussian_full", Gaussian, "tractable", "baseline", "Gaussian, full covariance",
    unit=base.density_unit, groups=("ladder", "taxonomy"))
GMM = base.ModelCard(
    "gmm", GaussianMixture, "tractable", "mixture", "mixture of Gaussians",
    unit=lambda: base.density_unit(num_steps=2000, learning_rate=1e-2,
                                   num_components=64),
    smoke=_shrink_gmm, groups=("ladder", "taxonomy"))
