"""Normalizing flows: affine coupling (RealNVP) and rational-quadratic splines.

A flow is an invertible map f from data x to a base variable z with a simple
density, and by the change of variables

    log p(x) = log p_base(f(x)) + log |det df/dx|.

Both flows here stack coupling layers: the first half of the coordinates passes
through unchanged and conditions an elementwise bijection of the second half;
a reversal permutation between layers lets every coordinate be transformed. In
2-D a coupling layer is exactly an autoregressive layer (x_2 given x_1).

Each conditioner's last layer starts at zero, so a fresh flow is the identity
and its density is exactly the base density.

* ``RealNVP``: y = x * exp(s) + t with a standard normal base, in coordinates
  normalised to about [-1, 1].
* ``SplineFlow``: monotone rational-quadratic splines on the unit interval
  (``splines.py``) with a uniform base on the unit box: the data box is mapped
  affinely onto [0, 1]^D, so the flow's support is exactly the data's box and no
  probability leaks past the edges. Conditioners see Fourier features of their
  input, which lets a small network draw sharp, wiggly coastlines.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from genmodels.numerics import coords
from genmodels.numerics import splines
from genmodels.numerics.features import fourier_features
from genmodels.models import base
from genmodels.models import fields

Array = jax.Array


class Conditioner(nn.Module):
  """MLP from the conditioning half to layer parameters; zero output at init."""
  num_outputs: int
  hidden: int = 128
  depth: int = 2
  num_frequencies: int = 0

  @nn.compact
  def __call__(self, c: Array) -> Array:
    h = fourier_features(c, int(self.num_frequencies))
    for _ in range(self.depth):
      h = nn.gelu(nn.Dense(self.hidden)(h))
    return nn.Dense(self.num_outputs, kernel_init=nn.initializers.zeros)(h)


def _split(x: Array) -> tuple[Array, Array]:
  d = x.shape[-1] // 2
  return x[..., :d], x[..., d:]


class _Coupling(nn.Module):
  """Shared coupling structure; subclasses define the elementwise bijection."""
  hidden: int = 128
  depth: int = 2
  num_frequencies: int = 0

  def params_per_dim(self) -> int:
    raise NotImplementedError

  def transform(self, x2, params, inverse):
    """Elementwise bijection of x2 given params [..., D2, params_per_dim]."""
    raise NotImplementedError

  @nn.compact
  def __call__(self, x: Array, inverse: bool = False) -> tuple[Array, Array]:
    x1, x2 = _split(x)
    dim = x2.shape[-1]
    params = Conditioner(dim * self.params_per_dim(), self.hidden, self.depth,
                         self.num_frequencies)(x1)
    params = params.reshape(*x1.shape[:-1], dim, self.params_per_dim())
    y2, logdet = self.transform(x2, params, inverse)
    return jnp.concatenate([x1, y2], -1), jnp.sum(logdet, -1)


class AffineCoupling(_Coupling):
  """RealNVP: y2 = x2 * exp(s(x1)) + t(x1), with a soft-clamped log-scale."""
  max_log_scale: float = 3.0

  def params_per_dim(self):
    return 2

  def transform(self, x2, p, inverse):
    log_scale = self.max_log_scale * jnp.tanh(p[..., 0] / self.max_log_scale)
    shift = p[..., 1]
    if inverse:
      return (x2 - shift) * jnp.exp(-log_scale), -log_scale
    return x2 * jnp.exp(log_scale) + shift, log_scale


class SplineCoupling(_Coupling):
  """Monotone rational-quadratic spline of x2 on [0, 1], conditioned on x1."""
  num_bins: int = 32

  def params_per_dim(self):
    return 3 * self.num_bins + 1

  def transform(self, x2, p, inverse):
    k = self.num_bins
    return splines.rational_quadratic_spline(
        x2, p[..., :k], p[..., k:2 * k], p[..., 2 * k:], inverse=inverse)


class _Flow(base.DensityModel):
  """A stack of coupling layers with reversals between them, plus a base density.

  Subclasses give ``to_base_space`` (a fixed affine normalisation of the data),
  ``base_log_prob`` and ``base_sample``.
  """
  lo: Sequence[float] = (-180.0, -90.0)
  hi: Sequence[float] = (180.0, 90.0)
  num_layers: int = 4
  hidden: int = 128
  depth: int = 2
  num_frequencies: int = 0

  positive_fields = ()  # a subclass's own positive integer fields

  def make_layer(self, i):
    raise NotImplementedError

  def setup(self):
    fields.require(self, positive=("num_layers", "hidden") + self.positive_fields,
                   nonnegative=("depth", "num_frequencies"), box=True)
    self.layers = [self.make_layer(i) for i in range(self.num_layers)]

  def forward(self, u: Array) -> tuple[Array, Array]:
    """Normalised data u -> base z, and log |det dz/du|."""
    total = jnp.zeros(u.shape[:-1], u.dtype)
    for layer in self.layers:
      u, logdet = layer(u)
      total += logdet
      u = u[..., ::-1]
    return u, total

  def inverse(self, z: Array) -> tuple[Array, Array]:
    """Base z -> normalised data u, and log |det du/dz|."""
    total = jnp.zeros(z.shape[:-1], z.dtype)
    for layer in reversed(self.layers):
      z = z[..., ::-1]
      z, logdet = layer(z, inverse=True)
      total += logdet
    return z, total

  def __call__(self, x: Array) -> Array:
    return self.log_prob(x)

  def log_prob(self, x: Array) -> Array:
    u, log_norm = self.to_base_space(x)
    z, logdet = self.forward(u)
    return self.base_log_prob(z) + logdet + log_norm

  def sample(self, rng: Array, n: int) -> Array:
    z = self.base_sample(rng, n)
    u, _ = self.inverse(z)
    return self.from_base_space(u)


class RealNVP(_Flow):
  """Affine coupling flow with a standard normal base."""

  def make_layer(self, i):
    return AffineCoupling(hidden=self.hidden, depth=self.depth,
                          num_frequencies=self.num_frequencies)

  @property
  def affine(self) -> coords.Affine:
    return coords.Affine.centred(self.lo, self.hi)

  def to_base_space(self, x):
    return self.affine.to_unit(x), -self.affine.log_det

  def from_base_space(self, u):
    return self.affine.from_unit(u)

  def base_log_prob(self, z):
    return jnp.sum(jax.scipy.stats.norm.logpdf(z), -1)

  def log_prob(self, x: Array) -> Array:
    # The conditioners' float32 arithmetic turns infinite or huge inputs into
    # NaN (sin(inf), inf - inf): such points have density 0 (``coords.FAR``).
    return coords.mask_log_prob(x, super().log_prob(x), affine=self.affine)

  def base_sample(self, rng, n):
    return jax.random.normal(rng, (n, len(self.lo)))


class SplineFlow(_Flow):
  """Rational-quadratic spline coupling flow on the box [lo, hi], uniform base.

  Points outside the box have density 0 (log-density -inf).
  """
  num_bins: int = 32
  positive_fields = ("num_bins",)

  def make_layer(self, i):
    return SplineCoupling(hidden=self.hidden, depth=self.depth,
                          num_frequencies=self.num_frequencies, num_bins=self.num_bins)

  @property
  def affine(self) -> coords.Affine:
    return coords.Affine.unit_box(self.lo, self.hi)

  def to_base_space(self, x):
    # Clip: in float32 a point on the upper edge can map to 1 + ulp, and with one
    # layer the untransformed coordinate would then fall off the base box.
    # Points off the data box get -inf in log_prob.
    u = jnp.clip(self.affine.to_unit(x), 0.0, 1.0)
    return u, -self.affine.log_det

  def from_base_space(self, u):
    return self.affine.from_unit(u)

  def base_log_prob(self, z):
    inside = jnp.all((z >= 0.0) & (z <= 1.0), -1)
    return jnp.where(inside, 0.0, -jnp.inf)

  def log_prob(self, x: Array) -> Array:
    # The splines clip their input into [0, 1]; points off the box get -inf here.
    lo, hi = jnp.asarray(self.lo), jnp.asarray(self.hi)
    inside = jnp.all((x >= lo) & (x <= hi), -1)
    return jnp.where(inside, super().log_prob(x), -jnp.inf)

  def base_sample(self, rng, n):
    return jax.random.uniform(rng, (n, len(self.lo)))


def _shrink_realnvp(u):
  u.model.update(num_layers=2, hidden=32)


SMALL = dict(num_layers=2, hidden=32, num_frequencies=4, num_bins=8)


def _shrink_spline_flow(u):
  u.model.update(SMALL)


REALNVP = base.ModelCard(
    "realnvp", RealNVP, "tractable", "normalizing flow", "RealNVP (affine couplings)",
    chapter=6, unit=lambda: base.density_unit(num_steps=2000, learning_rate=1e-3,
                                              num_layers=8, hidden=128, depth=2),
    smoke=_shrink_realnvp, groups=("ladder", "taxonomy"))
# lr 3e-3 diverges for this flow; weight decay 0.1 had the best validation NLL
# among the variants tried.
SPLINE_FLOW = base.ModelCard(
    "spline_flow", SplineFlow, "tractable", "normalizing flow",
    "rational-quadratic spline flow", chapter=6,
    unit=lambda: base.density_unit(num_steps=5000, learning_rate=1e-3,
                                   weight_decay=0.1, num_layers=4, hidden=128,
                                   depth=2, num_frequencies=32, num_bins=32),
    smoke=_shrink_spline_flow, groups=("ladder", "taxonomy"))
