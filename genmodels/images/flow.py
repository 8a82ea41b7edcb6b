"""A multiscale RealNVP / Glow-style coupling flow on dequantised images (ch. 6).

The flow is a density on continuous images; an integer image x in
{0..K-1}^D (D = H W C) gets a probability mass through *uniform
dequantization*: with v = x + u, u ~ U[0, 1)^D, the density p_v(v) =
p_y(v / K) K^-D on [0, K)^D has cell masses P(x) = int_[0,1)^D p_v(x + u) du,
and by Jensen

    log P(x) >= E_u[log p_y((x + u) / K)] - D log K,

so the bound's bits per dimension are the continuous NLL of v in bits per
dimension on the [0, K) scale. ``log_prob`` estimates the bound with
``num_dequant_samples`` uniform draws that are a function of the image alone
(a fixed key folded with a hash of its pixels: the same image gives the same
number in any batch), ``training_loss`` with one fresh draw per image.

The map from y in [0, 1)^D to the base z, every piece exactly invertible:

1. logit (RealNVP): w = logit(a + (1 - 2a) y), a = ``alpha`` (0.05), with
   log |dw/dy| = sum log(1 - 2a) - log s - log(1 - s), s = a + (1 - 2a) y;
2. ``num_scales`` levels of [squeeze (2x2 space-to-depth) -> ``num_steps_per_level``
   steps of (actnorm, channel mixing, affine coupling)], after every level but
   the last half of the channels is factored out to the base, N(0, I);
   H and W must be divisible by 2^num_scales (28x28x1: 14x14x4 -> 7x7x8).

* actnorm (Glow): y = (x + b) * exp(s) per channel, started from the first
  ``init_batch`` training images so its output has zero mean and unit variance;
  log-det H W sum(s).
* mixing: "conv1x1" is Glow's invertible 1x1 convolution in LU form,
  W = P L (U + diag(exp(d))) with P the channel reversal, L unit lower and
  U strictly upper triangular (started at W = P), log-det H W sum(d);
  "reverse" is the fixed reversal (log-det 0).
* coupling: the second half of the channels, x_b -> x_b exp(s) + t with
  (s, t) = net(x_a), the net Conv 3x3 -> ReLU -> Conv 1x1 -> ReLU -> Conv 3x3
  (``hidden`` channels, the last layer zero so a fresh coupling is the
  identity), s = m tanh(raw / m) bounded by m = ``max_log_scale``.

The logit's image of [0, 1] is the interior of (-a', 1 + a'), a' = a / (1 - 2a),
so the flow puts a little mass outside the unit box: the cell masses sum to
at most 1, and ``sample`` (floor(y K) clipped to the levels) adds that mass to
the edge levels, so the bound is a lower bound on the log-mass of the sampling
distribution too (tests/test_image_flow.py integrates both by quadrature).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from genmodels.errors import UsageError
from genmodels.images import models as image_models
from genmodels.models import base
from genmodels.models import fields
from genmodels.networks import classifiers

Array = jax.Array
_NOISE_SEED = 20261203  # the fixed key of log_prob's dequantization draws


def squeeze(x: Array) -> Array:
  """[N, H, W, C] -> [N, H/2, W/2, 4C]: each 2x2 block's pixels as channels."""
  return classifiers.space_to_depth(x, 2)


def unsqueeze(x: Array) -> Array:
  """The inverse of ``squeeze``: [N, h, w, 4c] -> [N, 2h, 2w, c]."""
  n, h, w, c4 = x.shape
  c = c4 // 4
  x = x.reshape(n, h, w, 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, 2 * h, 2 * w, c)


def scale_shapes(image_shape, num_scales: int) -> list[tuple[int, int, int]]:
  """(h, w, c) of the flow's state after each level's squeeze."""
  h, w, c = image_shape
  shapes = []
  for i in range(num_scales):
    h, w, c = h // 2, w // 2, 4 * c
    shapes.append((h, w, c))
    c = c // 2 if i < num_scales - 1 else c
  return shapes


def _flat_lecun_normal(key: Array, shape, dtype=jnp.float32) -> Array:
  """N(0, 1/fan_in) kernels drawn flat and reshaped: XLA:CPU compiles a
  many-dimensional threefry draw (flax's truncated normal) for seconds per
  shape, a flat one in well under a second."""
  fan_in = math.prod(shape[:-1])
  return (jax.random.normal(key, (math.prod(shape),), dtype)
          / math.sqrt(fan_in)).reshape(shape)


def _per_image(v: Array) -> Array:
  return jnp.sum(v.reshape(v.shape[0], -1), -1)


class ActNorm(nn.Module):
  """y = (x + b) exp(s) per channel; data-started (Glow) on the first call."""

  @nn.compact
  def __call__(self, x: Array, inverse: bool = False) -> tuple[Array, Array]:
    c = x.shape[-1]
    axes = tuple(range(x.ndim - 1))
    start = not inverse  # the data start is the forward pass at init
    bias = self.param("bias", lambda _: -jnp.mean(x, axes) if start else jnp.zeros(c))
    log_scale = self.param("log_scale", lambda _: jnp.clip(
        -jnp.log(jnp.std(x, axes) + 1e-6), -5.0, 5.0) if start else jnp.zeros(c))
    hw = math.prod(x.shape[1:-1])
    logdet = jnp.full(x.shape[:1], hw * jnp.sum(log_scale))
    if inverse:
      return x * jnp.exp(-log_scale) - bias, -logdet
    return (x + bias) * jnp.exp(log_scale), logdet


class Mixing(nn.Module):
  """An invertible channel mixing: Glow's LU 1x1 conv, or the fixed reversal."""
  kind: str = "conv1x1"

  @nn.compact
  def __call__(self, x: Array, inverse: bool = False) -> tuple[Array, Array]:
    c = x.shape[-1]
    if self.kind == "reverse" or c == 1:
      return x[..., ::-1], jnp.zeros(x.shape[:1])
    rows, cols = jnp.tril_indices(c, -1)
    lower = self.param("lower", nn.initializers.zeros, (rows.size,))
    upper = self.param("upper", nn.initializers.zeros, (rows.size,))
    log_diag = self.param("log_diag", nn.initializers.zeros, (c,))
    l = jnp.eye(c).at[rows, cols].set(lower)
    u = jnp.diag(jnp.exp(log_diag)).at[cols, rows].set(upper)
    w = (l @ u)[::-1]  # P L U, P the reversal; y = x W (channels as a row)
    logdet = jnp.full(x.shape[:1], math.prod(x.shape[1:-1]) * jnp.sum(log_diag))
    if inverse:
      return x @ jnp.linalg.inv(w), -logdet
    return x @ w, logdet


class AffineCoupling(nn.Module):
  """x_b -> x_b exp(s) + t, (s, t) = net(x_a), s = m tanh(raw / m)."""
  hidden: int = 32
  conv_impl: str = "im2col"
  max_log_scale: float = 2.0

  @nn.compact
  def __call__(self, x: Array, inverse: bool = False) -> tuple[Array, Array]:
    ca = x.shape[-1] // 2
    xa, xb = x[..., :ca], x[..., ca:]
    conv = classifiers.conv_function(self.conv_impl)
    h = nn.relu(nn.Conv(self.hidden, (3, 3), padding="SAME", conv_general_dilated=conv,
                        kernel_init=_flat_lecun_normal)(xa))
    h = nn.relu(nn.Conv(self.hidden, (1, 1), conv_general_dilated=conv,
                        kernel_init=_flat_lecun_normal)(h))
    out = nn.Conv(2 * xb.shape[-1], (3, 3), padding="SAME", conv_general_dilated=conv,
                  kernel_init=nn.initializers.zeros)(h)
    m = self.max_log_scale
    log_scale = m * jnp.tanh(out[..., 0::2] / m)
    shift = out[..., 1::2]
    if inverse:
      yb, logdet = (xb - shift) * jnp.exp(-log_scale), -_per_image(log_scale)
    else:
      yb, logdet = xb * jnp.exp(log_scale) + shift, _per_image(log_scale)
    return jnp.concatenate([xa, yb], -1), logdet


class RealNVPImage(base.DensityModel):
  """Multiscale RealNVP on uniform-dequantised images; see the module docstring.

  ``log_prob`` is uniform dequantization's Jensen bound, a lower bound on the
  log-probability mass: E_u[log p_y((x + u) / K)] - D log K, estimated with
  ``num_dequant_samples`` draws fixed by the image. ``forward``/``inverse``
  are the whole continuous map y <-> z (logit included); ``bijection`` and
  ``bijection_inverse`` the multiscale flow alone (logit space <-> z).
  """
  num_levels: int = 4
  image_shape: tuple[int, int, int] = (16, 16, 1)
  num_scales: int = 2
  num_steps_per_level: int = 4
  hidden: int = 32
  conv_impl: str = "im2col"
  num_dequant_samples: int = 4
  dequantization: str = "uniform"  # "variational" (Flow++) is not built
  mixing: str = "conv1x1"  # or "reverse"
  max_log_scale: float = 2.0
  alpha: float = 0.05
  temperature: float = 1.0
  init_batch: int = 256  # training images the actnorm start sees

  log_prob_is_bound = True
  bound_note = ("uniform-dequantization (Jensen) lower bound on the discrete mass: "
                "E_u log p((x + u) / K) - D log K, num_dequant_samples draws")
  trains_by_nll = False

  def setup(self):
    fields.require(self, positive=("num_levels", "num_scales", "num_steps_per_level",
                                   "hidden", "num_dequant_samples", "init_batch"),
                   positive_real=("max_log_scale", "temperature"))
    name = type(self).__name__
    if self.dequantization != "uniform":
      raise UsageError(f"{name}.dequantization must be 'uniform' (variational "
                       f"dequantization is not built), got {self.dequantization!r}")
    if self.mixing not in ("conv1x1", "reverse"):
      raise UsageError(f"{name}.mixing must be 'conv1x1' or 'reverse', got {self.mixing!r}")
    if not 0 < self.alpha < 0.5:
      raise UsageError(f"{name}.alpha must be in (0, 0.5), got {self.alpha!r}")
    classifiers.conv_function(self.conv_impl)  # a bad name fails here
    h, w, _ = self.image_shape
    block = 2 ** self.num_scales
    if h % block or w % block:
      raise UsageError(f"{name}: image_shape {tuple(self.image_shape)} needs H and W "
                       f"divisible by 2^num_scales = {block}: lower num_scales")
    self.steps = [
        (ActNorm(), Mixing(self.mixing),
         AffineCoupling(self.hidden, self.conv_impl, self.max_log_scale))
        for _ in range(self.num_scales * self.num_steps_per_level)]

  @property
  def num_dims(self) -> int:
    return math.prod(self.image_shape)

  def _level(self, i: int):
    s = self.num_steps_per_level
    return self.steps[i * s:(i + 1) * s]

  def bijection(self, w: Array) -> tuple[Array, Array]:
    """Logit-space images w [N, H, W, C] -> (z [N, D], log |det dz/dw| [N])."""
    logdet = jnp.zeros(w.shape[:1])
    parts, h = [], w
    for i in range(self.num_scales):
      h = squeeze(h)
      for step in self._level(i):
        for layer in step:
          h, ld = layer(h)
          logdet = logdet + ld
      if i < self.num_scales - 1:  # factor out the first half of the channels
        c = h.shape[-1] // 2
        parts.append(h[..., :c].reshape(h.shape[0], -1))
        h = h[..., c:]
    parts.append(h.reshape(h.shape[0], -1))
    return jnp.concatenate(parts, -1), logdet

  def bijection_inverse(self, z: Array) -> Array:
    """z [N, D] -> logit-space images w [N, H, W, C]: ``bijection``'s inverse."""
    shapes = scale_shapes(self.image_shape, self.num_scales)
    sizes = [math.prod(s) // 2 for s in shapes[:-1]] + [math.prod(shapes[-1])]
    cuts = [sum(sizes[:i + 1]) for i in range(len(sizes) - 1)]
    parts = jnp.split(z, cuts, -1)
    n = z.shape[0]
    h = parts[-1].reshape(n, *shapes[-1])
    for i in reversed(range(self.num_scales)):
      if i < self.num_scales - 1:
        hh, ww, c = shapes[i]
        h = jnp.concatenate([parts[i].reshape(n, hh, ww, c // 2), h], -1)
      for step in reversed(self._level(i)):
        for layer in reversed(step):
          h, _ = layer(h, inverse=True)
      h = unsqueeze(h)
    return h

  def logit(self, y: Array) -> tuple[Array, Array]:
    """y [N, H, W, C] in [0, 1] -> (w = logit(a + (1 - 2a) y), log |dw/dy| [N])."""
    a = self.alpha
    s = a + (1 - 2 * a) * y
    log_s, log_1ms = jnp.log(s), jnp.log1p(-s)
    return log_s - log_1ms, _per_image(math.log(1 - 2 * a) - log_s - log_1ms)

  def forward(self, y: Array) -> tuple[Array, Array]:
    """Images y [N, H, W, C] in [0, 1] -> (z [N, D], log |det dz/dy| [N])."""
    w, ld_logit = self.logit(y)
    z, ld_flow = self.bijection(w)
    return z, ld_logit + ld_flow

  def inverse(self, z: Array) -> Array:
    """z [N, D] -> y [N, H, W, C]: ``forward``'s inverse."""
    a = self.alpha
    return (jax.nn.sigmoid(self.bijection_inverse(z)) - a) / (1 - 2 * a)

  def continuous_log_prob(self, y: Array) -> Array:
    """log p_y(y) [N]: log N(z; 0, I) + log |det dz/dy|."""
    z, logdet = self.forward(y)
    return jnp.sum(-0.5 * jnp.square(z) - 0.5 * math.log(2 * math.pi), -1) + logdet

  def dequant_noise(self, levels: Array) -> Array:
    """u [S, N, D] ~ U[0, 1) for levels int32 [N, D], S = ``num_dequant_samples``:
    each image's from a fixed key folded with a hash of its pixels
    (sum_i x_i c_i mod 2^32, c_i fixed odd words), so a function of the image."""
    num_dims = levels.shape[1]
    coeff = jax.random.bits(jax.random.key(_NOISE_SEED), (num_dims,), jnp.uint32) | 1
    hashes = jnp.sum(levels.astype(jnp.uint32) * coeff, -1, dtype=jnp.uint32)
    keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(_NOISE_SEED + 1), hashes)
    s = int(self.num_dequant_samples)
    u = jax.vmap(lambda k: jax.random.uniform(k, (s * num_dims,)))(keys)
    return u.reshape(-1, s, num_dims).transpose(1, 0, 2)

  def _levels(self, x: Array) -> tuple[Array, Array]:
    levels, valid = image_models.as_levels(x, self.num_levels)
    if self.is_initializing():  # the actnorm start needs a batch, not the data set
      levels, valid = levels[:self.init_batch], valid[:self.init_batch]
    return levels, valid

  def _dequantized_log_p(self, levels: Array, u: Array) -> Array:
    """log p_v(x + u) = log p_y((x + u) / K) - D log K, for u [S, N, D] -> [S, N]."""
    s, n, _ = u.shape
    y = (levels[None].astype(u.dtype) + u) / self.num_levels
    lp = self.continuous_log_prob(y.reshape(s * n, *self.image_shape))
    return lp.reshape(s, n) - self.num_dims * math.log(self.num_levels)

  def _log_weights(self, x: Array) -> tuple[Array, Array]:
    levels, valid = self._levels(x)
    return self._dequantized_log_p(levels, self.dequant_noise(levels)), valid

  def log_prob(self, x: Array) -> Array:
    """Uniform dequantization; a lower bound on the log-probability mass:
    mean over the S draws of log p_v(x + u_s) (nats, [N]); -inf out of range."""
    log_w, valid = self._log_weights(x)
    return jnp.where(valid, jnp.mean(log_w, 0), -jnp.inf)

  def eval_metrics(self, x: Array) -> dict[str, Array]:
    """"nll": -log_prob (the Jensen bound); "iw_nll": the importance-weighted
    bound of the same S draws, -log mean_s p_v(x + u_s) <= "nll" (tighter,
    still a bound in expectation)."""
    log_w, valid = self._log_weights(x)
    iw = jax.nn.logsumexp(log_w, 0) - math.log(log_w.shape[0])
    return {"nll": jnp.where(valid, -jnp.mean(log_w, 0), jnp.inf),
            "iw_nll": jnp.where(valid, -iw, jnp.inf)}

  def training_loss(self, x: Array, rng: Array) -> tuple[Array, dict]:
    """The bound's mean NLL (nats) with one fresh uniform draw per image."""
    levels, _ = self._levels(x)
    u = jax.random.uniform(rng, (levels.size,)).reshape(1, *levels.shape)
    nll = -jnp.mean(self._dequantized_log_p(levels, u))
    return nll, {"nll": nll, "bits_per_dim": nll / (self.num_dims * math.log(2))}

  def sample(self, rng: Array, n: int) -> Array:
    """z ~ N(0, T^2 I), y = inverse(z), then floor(y K) clipped to the levels."""
    z = self.temperature * jax.random.normal(rng, (n, self.num_dims))
    y = self.inverse(z)
    return jnp.clip(jnp.floor(y * self.num_levels), 0, self.num_levels - 1).astype(jnp.int32)


def _shrink(u: ml_collections.ConfigDict) -> None:
  u.model.hidden = 8
  u.model.num_steps_per_level = 1
  u.model.num_dequant_samples = 1


def default_unit() -> ml_collections.ConfigDict:
  """Sized for ~5 minutes on 2 CPU cores: 2,000 steps of batch 64, measured
  (contended machine, im2col, 5 steps per lax.scan) at 32 ms/step on 16x16/4
  levels and 114 ms/step on 28x28/256 (XLA's conv: 269 and 445 ms/step)."""
  return image_models.image_unit(
      num_steps=2000, learning_rate=1e-3, batch_size=64, num_scales=2,
      num_steps_per_level=4, hidden=32, conv_impl="im2col", num_dequant_samples=4)


def book_sized_unit() -> ml_collections.ConfigDict:
  """RealNVP-paper-sized (for an accelerator): 2 scales of 8 steps, 256-channel
  coupling nets (RealNVP's 64-channel ResNets are deeper; Glow's nets are 512
  wide), batch 64, lr 1e-3, 100k steps, XLA's convolution, 8 dequantization
  draws at evaluation."""
  return image_models.image_unit(
      num_steps=100_000, learning_rate=1e-3, batch_size=64, num_scales=2,
      num_steps_per_level=8, hidden=256, conv_impl="xla", num_dequant_samples=8)


CARD = base.ModelCard(
    "realnvp_image", RealNVPImage, "tractable", "normalizing flow",
    "multiscale RealNVP", chapter=6, unit=default_unit, smoke=_shrink,
    fixed=("num_levels", "image_shape"), groups=("images",))
CARDS = (CARD,)
