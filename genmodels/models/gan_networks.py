"""The GAN's two networks and their helpers (``genmodels.models.gan``).

* ``Generator``: noise -> a raw point, the data's inverse CDFs (per latitude
  band with ``bands``) then residual warps; ``fold_into_box`` maps it into the
  box and ``box_excess`` measures how far it left it;
* ``Discriminator``: a point -> a logit, an MLP on Fourier features whose high
  frequencies fade in (coarse to fine: ``frequency_weights``), with the step
  count in ``StepCounter``.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from genmodels.errors import UsageError
from genmodels.numerics.features import fourier_features

Array = jax.Array


def fold_into_box(y: Array) -> Array:
  """y [..., D] -> [-1, 1]^D: the first coordinate (longitude) wraps around, the
  others reflect at +-1 (a triangle wave).

  Every sample lands in the box, the map is piecewise the identity (slope +-1:
  no gradient vanishes, unlike a squashing tanh or erf that lets samples pile
  up on an edge), and nothing the generator emits can hide where the
  discriminator's Fourier features, which have period 2, alias it onto land.
  """
  lon = jnp.mod(y[..., :1] + 1.0, 2.0) - 1.0
  rest = 1.0 - jnp.abs(jnp.mod(y[..., 1:] + 1.0, 4.0) - 2.0)
  return jnp.concatenate([lon, rest], -1)


def box_excess(y: Array) -> Array:
  """sum_i max(|y_i| - 1, 0)^2 per point [...]: how far y lies outside [-1, 1]^D."""
  return jnp.sum(jax.nn.relu(jnp.abs(y) - 1.0) ** 2, -1)


def quantile_knots(u: Array, num_quantiles: int) -> Array:
  """Each coordinate's quantiles of points u [N, D] at 0, 1/Q, ..., 1: [D, Q + 1]."""
  probs = jnp.linspace(0.0, 1.0, num_quantiles + 1)
  return jnp.quantile(u, probs, axis=0).T.astype(jnp.float32)


def band_knots(u: Array, num_quantiles: int, bands: int) -> Array:
  """Quantiles of u[:, 0] within each of ``bands`` equal-count bands of u[:, 1]
  (lowest first), at 0, 1/Q, ..., 1: [bands, Q + 1]. Any number of points."""
  n = u.shape[0]
  per_band = max(n // bands, 1)
  rank = (np.arange(bands * per_band) * n) // (bands * per_band)  # in [0, n)
  lon = u[jnp.argsort(u[:, 1]), 0][rank].reshape(bands, per_band)
  probs = jnp.linspace(0.0, 1.0, num_quantiles + 1)
  return jnp.quantile(lon, probs, axis=1).T.astype(jnp.float32)


def interp_uniform(p: Array, knots: Array, row: Array | None = None) -> Array:
  """The piecewise linear function through knots at p = 0, 1/Q, ..., 1, at p [...];
  ``row`` [...] picks a row of knots [R, Q + 1] per point (else knots is [Q + 1])."""
  q = knots.shape[-1] - 1
  t = jnp.clip(p, 0.0, 1.0) * q
  i = jnp.clip(jnp.floor(t), 0, q - 1).astype(jnp.int32)
  lo, hi = (knots[i], knots[i + 1]) if row is None else (knots[row, i], knots[row, i + 1])
  return lo + (t - i) * (hi - lo)


class Generator(nn.Module):
  """eps [..., noise_dim] -> u [..., 2]: a product of marginals, then residual warps.

  The base point y_0 takes each coordinate's inverse CDF, piecewise linear
  through ``num_quantiles`` + 1 knots, at Phi(eps_i): at initialisation the knots
  are the training data's quantiles, so a fresh generator samples the product of
  the data's marginals (and the uniform box without data). With ``bands`` > 0
  longitude instead takes its inverse CDF within the band of latitude eps_1
  falls in (``bands`` bands of equal mass, knots [bands, Q + 1] started at the
  data's longitude quantiles in each): a coarse joint distribution. Then

      y_{b+1} = y_b + MLP_b(Fourier features of y_b [and of erf(extra noise)]),

  each MLP's last layer starting at zero. The knots are parameters too. The
  output y_B is raw: ``fold_into_box`` maps it into the box.
  """
  noise_dim: int = 2
  hidden: int = 256
  depth: int = 2
  blocks: int = 2
  num_frequencies: int = 16
  num_quantiles: int = 256
  out_dim: int = 2
  bands: int = 0

  @nn.compact
  def __call__(self, eps: Array, init_u: Array | None = None) -> Array:
    if self.noise_dim < self.out_dim:
      raise UsageError(f"noise_dim must be at least {self.out_dim}, got {self.noise_dim}")
    probs = jnp.linspace(0.0, 1.0, self.num_quantiles + 1)

    def init_knots(_):
      if init_u is None:
        return jnp.tile(2.0 * probs - 1.0, (self.out_dim, 1)).astype(jnp.float32)
      return quantile_knots(init_u, self.num_quantiles)

    p = jax.scipy.special.ndtr(eps[..., :self.out_dim])
    if self.bands:
      if self.out_dim != 2:
        raise UsageError(f"bands need out_dim 2 (lon, lat), got {self.out_dim}")
      lat_knots = self.param("lat_quantiles", lambda k: init_knots(k)[1])
      lon_knots = self.param(
          "lon_quantiles", lambda k: jnp.tile(init_knots(k)[:1], (self.bands, 1))
          if init_u is None else band_knots(init_u, self.num_quantiles, self.bands))
      band = jnp.clip(jnp.floor(p[..., 1] * self.bands), 0, self.bands - 1)
      y = jnp.stack([interp_uniform(p[..., 0], lon_knots, band.astype(jnp.int32)),
                     interp_uniform(p[..., 1], lat_knots)], -1)
    else:
      knots = self.param("quantiles", init_knots)
      y = jnp.stack([jnp.interp(p[..., i], probs, knots[i])
                     for i in range(self.out_dim)], -1)
    extra = jax.scipy.special.erf(eps[..., self.out_dim:] / np.sqrt(2.0))
    for b in range(self.blocks):
      h = fourier_features(jnp.concatenate([y, extra], -1), int(self.num_frequencies))
      for _ in range(self.depth):
        h = nn.silu(nn.Dense(self.hidden)(h))
      y = y + nn.Dense(self.out_dim, kernel_init=nn.initializers.zeros,
                       name=f"out_{b}")(h)
    return y


COARSE_START = 2.0  # frequencies the discriminator sees at step 0 of coarse-to-fine


def frequency_weights(num_frequencies: int, level) -> Array:
  """Weight of frequency k = 1..K at a (fractional) ``level``: 1 for k <= level,
  0 for k >= level + 1, a half-cosine ramp in between. [K]."""
  k = jnp.arange(1, num_frequencies + 1, dtype=jnp.float32)
  return 0.5 * (1.0 - jnp.cos(jnp.pi * jnp.clip(level - k + 1.0, 0.0, 1.0)))


class StepCounter(nn.Module):
  """The number of training steps taken, in the mutable collection "schedule".

  Returns None where the collection is absent and immutable (e.g. an apply with
  the parameters only): the schedule is then over.
  """

  @nn.compact
  def __call__(self, advance: bool):
    if not (self.has_variable("schedule", "step")
            or self.is_mutable_collection("schedule")):
      return None
    step = self.variable("schedule", "step", lambda: jnp.zeros((), jnp.int32))
    value = step.value
    if advance and not self.is_initializing() and self.is_mutable_collection("schedule"):
      step.value = value + 1
    return value


class Discriminator(nn.Module):
  """u [..., 2] -> a logit [...]: an MLP on Fourier features of u.

  ``level`` (None: all) fades frequencies above it out of the features.
  """
  hidden: int = 256
  depth: int = 3
  num_frequencies: int = 32

  @nn.compact
  def __call__(self, u: Array, level=None) -> Array:
    h = fourier_features(u, int(self.num_frequencies))
    if level is not None and self.num_frequencies:
      w = jnp.tile(frequency_weights(self.num_frequencies, level), u.shape[-1])
      d = u.shape[-1]
      h = jnp.concatenate([h[..., :d], h[..., d:d + w.size] * w, h[..., d + w.size:] * w], -1)
    for _ in range(self.depth):
      h = nn.silu(nn.Dense(self.hidden)(h))
    return nn.Dense(1, name="out")(h)[..., 0]
