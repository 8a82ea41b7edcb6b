"""Chapter 3's convolutional VAE as an image model with a discrete decoder.

A latent z ~ p(z) = N(0, I_d) and a decoder p(x | z) over the integer image
x in {0..K-1}^(H x W x C) define p(x) = integral p(z) p(x | z) dz. Given z the
pixels are independent, each with an exact probability MASS over the K levels:

* ``categorical`` (K <= 16 by default): K logits per pixel, a softmax;
* ``logistic_mixture`` (K = 256 by default): a mixture of M discretized
  logistics (PixelCNN++'s). Level k sits at c_k = 2k/(K-1) - 1 in [-1, 1], its
  bin is [c_k - delta, c_k + delta], delta = 1/(K-1), and with the logistic
  CDF sigma((t - mu)/s)

      P(k) = sigma(a_k) - sigma(b_k),  a_k = (c_k + delta - mu)/s,  b_k = (c_k - delta - mu)/s,

  except that the lowest bin reaches down to -inf (b_0 = -inf) and the highest
  up to +inf (a_{K-1} = +inf): the sum telescopes to exactly 1. It is
  evaluated stably as log P = log sigma(a) + log sigma(-b) + log(1 - e^{-(a-b)})
  (the identity sigma(a) - sigma(b) = sigma(a) sigma(-b) (1 - e^{b-a})), each
  term finite for every mean and scale; a - b = 2 delta / s > 0.

The encoder q(z | x) = N(mu(x), diag sigma^2(x)) is the book's: three 3x3
stride-2 convolutions (32, 64, 128 filters, ReLU, SAME), flatten, dense layers
to the mean and the log-variance. The decoder mirrors it: dense to a
ceil(H/8) x ceil(W/8) x 128 grid, three x2 upsamplings (128, 64, 32 filters,
ReLU), a 3x3 convolution to the likelihood's parameters, and a centre crop to
H x W (28 -> 32 -> 28; 16 stays 16). Each upsampling is a sub-pixel
convolution, a 3x3 stride-1 conv to 4F channels and a depth-to-space shuffle;
it contains every 3x3 stride-2 transposed convolution (an output pixel of one
of those sees at most 2x2 inputs, inside the 3x3 window), so no transposed
(dilated) convolution is needed and ``conv_impl="im2col"`` covers every layer.

* ``training_loss`` = -ELBO = -(E_q log p(x | z) - KL(q || p(z))), one
  reparameterised z = mu + sigma eps per image, the KL in closed form.
* ``log_prob`` = the importance-weighted bound (IWAE)

      L_K(x) = log (1/K) sum_k p(x | z_k) p(z_k) / q(z_k | x),   z_k ~ q(z | x),

  with K = ``num_importance_samples``: a lower bound on log p(x)
  (``log_prob_is_bound``), E L_1 = ELBO <= E L_K <= log p(x), rising to
  log p(x) with K. The draws come from a fixed key folded with a hash of each
  image, so an image's number depends on nothing else (not the batch).
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from genmodels.errors import UsageError
from genmodels.images.models import as_levels, image_unit, sample_levels
from genmodels.models import base
from genmodels.models import fields
from genmodels.networks import classifiers
from genmodels.numerics.gaussians import (gaussian_log_prob, gaussian_sample,
                                          kl_to_standard_normal)

Array = jax.Array
DECODERS = ("auto", "categorical", "logistic_mixture")
LOG_SCALE_RANGE = (-7.0, 7.0)  # the logistics' log s, clipped (PixelCNN++'s floor)
LOG_VAR_RANGE = (-16.0, 8.0)  # q(z | x)'s log sigma^2, clipped


# The discrete likelihoods: [..., P] log-probabilities of integer levels. --------


def categorical_log_prob(logits: Array, levels: Array) -> Array:
  """log softmax(logits)[level]: logits [..., P, K], levels [..., P] -> [..., P]."""
  log_p = jax.nn.log_softmax(logits, -1)
  return jnp.take_along_axis(log_p, levels[..., None], -1)[..., 0]


def _split_logistic(params: Array):
  """[..., 3M] -> mixture logits, means, log-scales (clipped), each [..., M]."""
  logits, means, raw = jnp.split(params, 3, -1)
  return logits, means, jnp.clip(raw, *LOG_SCALE_RANGE)


def discretized_logistic_log_prob(means: Array, log_scales: Array, levels: Array,
                                  num_levels: int) -> Array:
  """log P(level) of one discretized logistic on the grid c_k = 2k/(K-1) - 1
  (the module docstring's formula; the end bins reach to -inf and +inf)."""
  delta = 1.0 / (num_levels - 1)
  centre = 2.0 * levels.astype(means.dtype) * delta - 1.0
  inv_s = jnp.exp(-log_scales)
  a = (centre + delta - means) * inv_s
  b = (centre - delta - means) * inv_s
  top, bottom = levels >= num_levels - 1, levels <= 0
  width = 2.0 * delta * inv_s  # a - b > 0
  log_mid = jax.nn.log_sigmoid(a) + jax.nn.log_sigmoid(-b) + jnp.log(-jnp.expm1(-width))
  return jnp.where(bottom & top, 0.0,  # K = 1: one level, probability 1
                   jnp.where(bottom, jax.nn.log_sigmoid(a),
                             jnp.where(top, jax.nn.log_sigmoid(-b), log_mid)))


def logistic_mixture_log_prob(params: Array, levels: Array, num_levels: int) -> Array:
  """params [..., P, 3M] (mixture logits, means, log-scales), levels [..., P] ->
  [..., P]: log sum_m pi_m P_m(level)."""
  logits, means, log_scales = _split_logistic(params)
  comp = discretized_logistic_log_prob(means, log_scales, levels[..., None], num_levels)
  return jax.nn.logsumexp(jax.nn.log_softmax(logits, -1) + comp, -1)


def sample_logistic_mixture(rng: Array, params: Array, num_levels: int) -> Array:
  """One int32 level per pixel of params [..., P, 3M]: a component m ~ pi, then
  t = mu_m + s_m log(u / (1 - u)) and the level whose bin holds t (exact: the
  bins partition the line)."""
  logits, means, log_scales = _split_logistic(params)
  m_rng, u_rng = jax.random.split(rng)
  m = sample_levels(m_rng, jax.nn.log_softmax(logits, -1), logits.shape[:-1])
  mu = jnp.take_along_axis(means, m[..., None], -1)[..., 0]
  s = jnp.exp(jnp.take_along_axis(log_scales, m[..., None], -1)[..., 0])
  u = jax.random.uniform(u_rng, (math.prod(mu.shape),), minval=1e-6,
                         maxval=1 - 1e-6).reshape(mu.shape)
  t = mu + s * (jnp.log(u) - jnp.log1p(-u))
  level = jnp.round((jnp.clip(t, -2.0, 2.0) + 1.0) * 0.5 * (num_levels - 1))
  return jnp.clip(level, 0, num_levels - 1).astype(jnp.int32)


def logistic_mixture_mean(params: Array, num_levels: int) -> Array:
  """E[level] of params [..., P, 3M]: sum_{k=1}^{K-1} P(level >= k), where
  P(level >= k) = sum_m pi_m (1 - sigma((c_k - delta - mu_m)/s_m)), one k at a
  time (memory [..., P], not [..., P, K])."""
  logits, means, log_scales = _split_logistic(params)
  pi, inv_s = jax.nn.softmax(logits, -1), jnp.exp(-log_scales)
  delta = 1.0 / (num_levels - 1)

  def add(total, k):
    edge = 2.0 * k * delta - 1.0 - delta
    return total + jnp.sum(pi * jax.nn.sigmoid((means - edge) * inv_s), -1), None

  ks = jnp.arange(1, num_levels, dtype=params.dtype)
  return jax.lax.scan(add, jnp.zeros(params.shape[:-1], params.dtype), ks)[0]


# The networks. -----------------------------------------------------------------


def depth_to_space(x: Array, block: int = 2) -> Array:
  """[N, H, W, b*b*C] -> [N, bH, bW, C] (the inverse of ``space_to_depth``)."""
  n, h, w, c = x.shape
  x = x.reshape(n, h, w, block, block, c // (block * block))
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, h * block, w * block, -1)


class ConvEncoder(nn.Module):
  """Images in [-1, 1] -> (mean, log-variance) [N, latent_dim]: 3x3 stride-2
  convolutions with ReLU, flatten, two dense heads."""
  latent_dim: int
  filters: Sequence[int]
  conv_impl: str

  @nn.compact
  def __call__(self, u: Array) -> tuple[Array, Array]:
    conv_fn = classifiers.conv_function(self.conv_impl)
    for f in self.filters:
      u = nn.relu(nn.Conv(f, (3, 3), strides=2, padding="SAME",
                          conv_general_dilated=conv_fn)(u))
    h = u.reshape(u.shape[0], -1)
    mean = nn.Dense(self.latent_dim, name="mean")(h)
    log_var = nn.Dense(self.latent_dim, name="log_var")(h)
    return mean, jnp.clip(log_var, *LOG_VAR_RANGE)


class ConvDecoder(nn.Module):
  """z [..., d] -> likelihood parameters [..., H, W, C, out_per_pixel]: dense to
  a coarse grid, sub-pixel x2 upsamplings (filters in reverse), a 3x3 conv and
  a centre crop."""
  image_shape: tuple[int, int, int]
  filters: Sequence[int]
  out_per_pixel: int
  conv_impl: str

  @nn.compact
  def __call__(self, z: Array) -> Array:
    conv_fn = classifiers.conv_function(self.conv_impl)
    h_img, w_img, c_img = self.image_shape
    lead = z.shape[:-1]
    z = z.reshape(-1, z.shape[-1])
    up = 2 ** len(self.filters)
    gh, gw = -(-h_img // up), -(-w_img // up)
    top = self.filters[-1] if self.filters else 32
    x = nn.relu(nn.Dense(gh * gw * top)(z)).reshape(-1, gh, gw, top)
    for f in reversed(self.filters):
      x = nn.Conv(4 * f, (3, 3), padding="SAME", conv_general_dilated=conv_fn)(x)
      x = nn.relu(depth_to_space(x))
    x = nn.Conv(c_img * self.out_per_pixel, (3, 3), padding="SAME",
                conv_general_dilated=conv_fn, name="head")(x)
    oh, ow = (x.shape[1] - h_img) // 2, (x.shape[2] - w_img) // 2
    x = x[:, oh:oh + h_img, ow:ow + w_img]
    return x.reshape(*lead, h_img, w_img, c_img, self.out_per_pixel)


# The model. -------------------------------------------------------------------


class ImageVAE(base.DensityModel):
  """The book's chapter-3 VAE over integer images, with a discrete decoder.

  ``log_prob`` is the IWAE lower bound with ``num_importance_samples`` draws.

  Attributes:
    num_levels, image_shape: set by the task (K levels; (H, W, C)).
    latent_dim: d, the latent's dimension (the book's 2).
    filters: the encoder's stride-2 conv widths (the book's 32, 64, 128); the
      decoder uses them in reverse.
    decoder: "categorical", "logistic_mixture" or "auto" (categorical for
      K <= 16, else the mixture).
    num_logistics: M, the mixture's components per pixel.
    num_importance_samples: K of the IWAE bound.
    iwae_chunk: importance samples decoded at once (memory: chunk x batch).
    conv_impl: "im2col" (matmuls; fast to train on CPU in ``lax.scan``) or "xla".
  """
  trains_by_nll = False
  log_prob_is_bound = True
  bound_note = ("IWAE lower bound on the discrete mass (num_importance_samples "
                "draws; no dequantization: the decoder is discrete)")

  num_levels: int = 4
  image_shape: tuple[int, int, int] = (16, 16, 1)
  latent_dim: int = 2
  filters: Sequence[int] = (32, 64, 128)
  decoder: str = "auto"
  num_logistics: int = 5
  num_importance_samples: int = 64
  iwae_chunk: int = 8
  conv_impl: str = "im2col"

  def setup(self):
    fields.require(self, positive=("num_levels", "latent_dim", "num_logistics",
                                   "num_importance_samples", "iwae_chunk"),
                   positive_pairs=("image_shape", "filters"))
    if self.decoder not in DECODERS:
      raise UsageError(f"ImageVAE.decoder must be one of {', '.join(DECODERS)}, "
                       f"got {self.decoder!r}")
    if self.likelihood == "logistic_mixture" and self.num_levels < 2:
      raise UsageError("ImageVAE.decoder='logistic_mixture' needs num_levels >= 2")
    classifiers.conv_function(self.conv_impl)
    out = (self.num_levels if self.likelihood == "categorical"
           else 3 * self.num_logistics)
    self.encoder = ConvEncoder(self.latent_dim, tuple(self.filters), self.conv_impl)
    self.decoder_net = ConvDecoder(tuple(self.image_shape), tuple(self.filters),
                                   out, self.conv_impl)

  @property
  def likelihood(self) -> str:
    if self.decoder == "auto":
      return "categorical" if self.num_levels <= 16 else "logistic_mixture"
    return self.decoder

  def _inputs(self, x: Array) -> tuple[Array, Array, Array]:
    """(images in [-1, 1] [N, H, W, C], levels [N, P], in-range flag [N])."""
    levels, valid = as_levels(x, self.num_levels)
    u = 2.0 * levels / max(self.num_levels - 1, 1) - 1.0
    return u.reshape(x.shape[0], *self.image_shape), levels, valid

  def pixel_log_probs(self, params: Array, levels: Array) -> Array:
    """log p(x | z) per pixel: decoder output [..., H, W, C, O], levels [N, P]
    (broadcast over the leading sample axes) -> [..., N, P]."""
    params = params.reshape(*params.shape[:-4], -1, params.shape[-1])
    levels = jnp.broadcast_to(levels, params.shape[:-1])
    if self.likelihood == "categorical":
      return categorical_log_prob(params, levels)
    return logistic_mixture_log_prob(params, levels, self.num_levels)

  def decoder_log_prob(self, z: Array, x: Array) -> Array:
    """log p(x | z) [..., N] for z [..., N, d] and images x [N, H, W, C]."""
    _, levels, _ = self._inputs(x)
    return jnp.sum(self.pixel_log_probs(self.decoder_net(z), levels), -1)

  def encode(self, x: Array) -> Array:
    """q(z | x)'s mean [N, d] (the latent-space figure)."""
    return self.encoder(self._inputs(x)[0])[0]

  def posterior(self, x: Array) -> tuple[Array, Array]:
    """q(z | x) as (mean, Cholesky factor diag(sigma)) [N, d], [N, d, d]."""
    mean, log_var = self.encoder(self._inputs(x)[0])
    return mean, jnp.exp(0.5 * log_var)[..., None] * jnp.eye(self.latent_dim)

  def decode_mean(self, z: Array) -> Array:
    """E[x | z] in levels (float) [N, H, W, C]: the decoded grid's images."""
    params = self.decoder_net(z)
    if self.likelihood == "categorical":
      return jnp.sum(jax.nn.softmax(params, -1) * jnp.arange(self.num_levels), -1)
    return logistic_mixture_mean(params, self.num_levels)

  def training_loss(self, x: Array, rng: Array) -> tuple[Array, dict]:
    """-ELBO of the batch (nats per image): one reparameterised z, analytic KL."""
    u, levels, _ = self._inputs(x)
    mean, log_var = self.encoder(u)
    chol = jnp.exp(0.5 * log_var)[..., None] * jnp.eye(self.latent_dim)
    z = gaussian_sample(rng, mean, chol)
    recon = jnp.sum(self.pixel_log_probs(self.decoder_net(z), levels), -1)
    kl = kl_to_standard_normal(mean, chol)
    elbo = jnp.mean(recon - kl)
    return -elbo, {"elbo": elbo, "kl": jnp.mean(kl), "recon": jnp.mean(recon)}

  def log_weights(self, x: Array, num_samples: int, seed: int = 0) -> Array:
    """log p(x | z_k) + log p(z_k) - log q(z_k | x), z_k ~ q(z | x): [K, N].

    Image i draws its eps from fold_in(key(seed), hash(x_i)); the decoder runs
    ``iwae_chunk`` samples at a time in a ``lax.map``. Out-of-range images: -inf.
    """
    u, levels, valid = self._inputs(x)
    q_mean, log_var = self.encoder(u)
    q_chol = jnp.exp(0.5 * log_var)[..., None] * jnp.eye(self.latent_dim)
    chunk = max(1, min(int(self.iwae_chunk), int(num_samples)))
    num_chunks = -(-int(num_samples) // chunk)
    keys = jax.vmap(lambda h: jax.random.fold_in(jax.random.key(seed), h))(
        image_hash(levels))
    eps = jax.vmap(lambda k: jax.random.normal(k, (num_chunks * chunk, self.latent_dim)))(keys)
    eps = eps.transpose(1, 0, 2).reshape(num_chunks, chunk, *q_mean.shape)
    if self.is_initializing():
      self.decoder_net(q_mean)
    decoder = self.decoder_net.clone(parent=None)
    decoder_vars = {"params": self.decoder_net.variables["params"]}

    def one_chunk(e):
      z = q_mean + jnp.einsum("nij,knj->kni", q_chol, e)
      params = decoder.apply(decoder_vars, z)
      log_lik = jnp.sum(self.pixel_log_probs(params, levels), -1)
      log_prior = jnp.sum(jax.scipy.stats.norm.logpdf(z), -1)
      return log_lik + log_prior - gaussian_log_prob(z, q_mean, q_chol)

    out = jax.lax.map(one_chunk, eps).reshape(num_chunks * chunk, -1)[:num_samples]
    return jnp.where(valid, out, -jnp.inf)

  def iwae_bound(self, x: Array, num_samples: int, seed: int = 0) -> Array:
    """L_K(x) [N]: logsumexp of K log-weights minus log K."""
    log_w = self.log_weights(x, num_samples, seed)
    return jax.nn.logsumexp(log_w, 0) - jnp.log(float(num_samples))

  def log_prob(self, x: Array) -> Array:
    """The IWAE bound L_K(x) <= log p(x), K = ``num_importance_samples``."""
    return self.iwae_bound(x, int(self.num_importance_samples))

  def elbo(self, x: Array, num_samples: int | None = None, seed: int = 0) -> Array:
    """Monte Carlo ELBO [N], the mean of the log-weights: with the defaults the
    same draws as ``log_prob``, so elbo(x) <= log_prob(x) image by image."""
    k = int(self.num_importance_samples if num_samples is None else num_samples)
    return jnp.mean(self.log_weights(x, k, seed), 0)

  def eval_metrics(self, x: Array) -> dict[str, Array]:
    """"nll" = -IWAE (as ``log_prob``) and "neg_elbo" (>= nll), from one set of
    K log-weights."""
    k = int(self.num_importance_samples)
    log_w = self.log_weights(x, k)
    return {"nll": jnp.log(float(k)) - jax.nn.logsumexp(log_w, 0),
            "neg_elbo": -jnp.mean(log_w, 0)}

  def diagnostics(self, x: Array) -> dict[str, Array]:
    """Is K large enough? The mean bound at 2K minus that at K (nats per image)."""
    k = int(self.num_importance_samples)
    gain = jnp.mean(self.iwae_bound(x, 2 * k, 2) - self.iwae_bound(x, k, 1))
    return {"iwae_samples": jnp.asarray(k), "iwae_doubling_gain": gain}

  def sample(self, rng: Array, n: int) -> Array:
    """z ~ N(0, I), then every pixel from p(x | z): int32 [n, H, W, C]."""
    z_rng, x_rng = jax.random.split(rng)
    z = jax.random.normal(z_rng, (n * self.latent_dim,)).reshape(n, self.latent_dim)
    params = self.decoder_net(z)
    if self.likelihood == "categorical":
      return sample_levels(x_rng, jax.nn.log_softmax(params, -1), params.shape[:-1])
    return sample_logistic_mixture(x_rng, params, self.num_levels)


_HASH_WEIGHTS: dict[int, np.ndarray] = {}

def image_hash(levels: Array) -> Array:
  """uint32 [N] of levels [N, P]: sum_p levels_p w_p (mod 2^32) with fixed
  odd pseudo-random w (a collision only means two images share draws)."""
  p = levels.shape[-1]
  if p not in _HASH_WEIGHTS:
    w = np.random.default_rng(12345).integers(0, 2 ** 31, p, dtype=np.int64) * 2 + 1
    _HASH_WEIGHTS[p] = w.astype(np.uint32)
  w = jnp.asarray(_HASH_WEIGHTS[p])
  return jnp.sum((levels.astype(jnp.uint32) + 1) * w, -1, dtype=jnp.uint32)


def _unit():
  """Measured (2 shared, contended CPU cores, batch 128, im2col, lax.scan of 5
  steps): 217 ms/step at 16x16x4 (xla: 5-7 s/step, the naive weight-gradient
  emitter), 1.7-1.8 s/step at 28x28x256. 2,000 steps is ~7 minutes at 16x16;
  at 28x28 it is not yet sized to 5 minutes (see the report)."""
  return image_unit(num_steps=2000, learning_rate=2e-3, batch_size=128,
                    filters=(16, 32, 64), latent_dim=2)


def book_sized_unit():
  """The book's sizes (an accelerator): filters 32/64/128, latent 2, batch 100,
  5 epochs of 60,000 (the book's 32x32 input; here the images stay 16 or 28)."""
  return image_unit(num_steps=5 * 600, learning_rate=1e-3, batch_size=100,
                    filters=(32, 64, 128), latent_dim=2)


def _shrink(u):
  u.model.update(filters=(4, 8), num_importance_samples=8, iwae_chunk=4)


CARD = base.ModelCard(
    "vae_image", ImageVAE, "approximate", "variational autoencoder",
    "VAE (discrete decoder)", chapter=3, unit=_unit, smoke=_shrink,
    fixed=("num_levels", "image_shape"), groups=("images",))
