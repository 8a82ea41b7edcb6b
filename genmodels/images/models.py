"""Discrete image models: exact probability mass over integer images.

Every model here is a ``base.DensityModel`` over x [N, H, W, C] with integer
values in {0, ..., num_levels - 1}: ``log_prob(x) -> [N]`` is the exact
log-probability mass in nats (-inf for a value outside the levels), and
``sample(rng, n)`` returns int32 images of the training data's shape. The
image shape comes from the data the model is initialised on
(``model.init(rng, x_train, method="log_prob")``), as the world map's box
takes its bounds from its training points.

* ``IndependentPixels``: one categorical per pixel. Its maximum-likelihood
  estimate is closed form (the per-pixel level frequencies); it starts there,
  with add-``smoothing`` counts (1/2: Jeffreys) so that no level has mass 0,
  and trains for 0 steps.
* ``PixelMixture``: a mixture of M independent-pixel components, fit by
  gradient MLE (log p(x) = logsumexp_m [log w_m + sum_pixels log p_m(x_pixel)]).

Their cards are registered in ``genmodels/images/cards.py`` (the image
experiment's own registry; the world map's is ``genmodels.models``), one line
per model, with the deep models of their own modules.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from genmodels.errors import UsageError
from genmodels.models import base
from genmodels.models import fields
from genmodels.training import experiment

Array = jax.Array


def as_levels(x: Array, num_levels: int) -> tuple[Array, Array]:
  """x [N, ...] -> (int32 [N, P] levels clipped into range, [N] all-in-range flag)."""
  flat = jnp.reshape(x, (x.shape[0], -1))
  if jnp.issubdtype(flat.dtype, jnp.floating):  # an exact level in a float array
    valid = jnp.all((flat == jnp.round(flat)) & (flat >= 0) & (flat < num_levels), -1)
  else:
    valid = jnp.all((flat >= 0) & (flat < num_levels), -1)
  return jnp.clip(flat, 0, num_levels - 1).astype(jnp.int32), valid


def pixel_counts(x: Array, num_levels: int) -> Array:
  """[H, W, C, K] counts of each level at each pixel over the images x [N, H, W, C]."""
  levels, _ = as_levels(x, num_levels)
  num_pixels = levels.shape[1]
  counts = jnp.zeros((num_pixels, num_levels), jnp.float32)
  counts = counts.at[jnp.arange(num_pixels)[None, :], levels].add(1.0)
  return counts.reshape(*x.shape[1:], num_levels)


def smoothed_log_frequencies(x: Array, num_levels: int, smoothing: float) -> Array:
  """log((count + a) / (N + K a)) per pixel and level: the smoothed MLE."""
  counts = pixel_counts(x, num_levels)
  return jnp.log(counts + smoothing) - jnp.log(x.shape[0] + num_levels * smoothing)


def _pixel_log_probs(log_p: Array, levels: Array) -> Array:
  """log_p [..., P, K] at levels [N, P] -> [..., N, P] (a gather, no one-hot)."""
  num_pixels, num_levels = log_p.shape[-2:]
  flat = log_p.reshape(*log_p.shape[:-2], num_pixels * num_levels)
  return flat[..., jnp.arange(num_pixels) * num_levels + levels]


def sample_levels(rng: Array, log_p: Array, shape: tuple[int, ...]) -> Array:
  """int32 levels of ``shape`` from the categoricals log_p [..., K] (broadcast
  to ``shape``), by inverting the CDF: k = #{j < K-1 : u >= cdf_j} for one
  uniform u per draw. The uniforms are drawn flat and reshaped: XLA on CPU
  compiles a many-dimensional threefry draw (``jax.random.categorical``'s
  K gumbels per pixel) for seconds; a flat one in well under a second."""
  u = jax.random.uniform(rng, (math.prod(shape),)).reshape(*shape, 1)
  cdf = jnp.cumsum(jnp.exp(log_p), -1)[..., :-1]
  return jnp.sum(u >= cdf, -1).astype(jnp.int32)


class IndependentPixels(base.DensityModel):
  """A categorical over ``num_levels`` grey levels per pixel, independent.

  The parameters are per-pixel logits [H, W, C, K] (normalised by a softmax,
  so any values are a distribution); they start at the smoothed MLE, the log
  of (count + smoothing) / (N + K smoothing).
  """
  num_levels: int = 4
  smoothing: float = 0.5

  @nn.compact
  def __call__(self, x: Array | None = None) -> Array:
    fields.require(self, positive=("num_levels",), positive_real=("smoothing",))
    return _param(self, "logits", lambda _: smoothed_log_frequencies(
        _need_data(x), self.num_levels, self.smoothing))

  def log_prob(self, x: Array) -> Array:
    log_p = jax.nn.log_softmax(self(x), -1)
    levels, valid = as_levels(x, self.num_levels)
    lp = jnp.sum(_pixel_log_probs(log_p.reshape(-1, self.num_levels), levels), -1)
    return jnp.where(valid, lp, -jnp.inf)

  def marginals(self) -> Array:
    """[H, W, C, K] per-pixel level probabilities."""
    return jax.nn.softmax(self(), -1)

  def sample(self, rng: Array, n: int) -> Array:
    log_p = jax.nn.log_softmax(self(), -1)
    return sample_levels(rng, log_p, (n, *log_p.shape[:-1]))

  def num_free_params(self, params) -> int:
    *pixels, k = params["logits"].shape
    return math.prod(pixels) * (k - 1)


class PixelMixture(base.DensityModel):
  """A mixture of ``num_components`` independent-pixel models, by gradient MLE.

  Component m starts at ``init_weight`` x one-hot of a random training image
  plus (1 - ``init_weight``) x the smoothed per-pixel frequencies (as the
  world map's mixture starts its means at training points); the weights start
  uniform.
  """
  num_levels: int = 4
  num_components: int = 32
  init_weight: float = 0.5
  smoothing: float = 0.5

  @nn.compact
  def __call__(self, x: Array | None = None) -> tuple[Array, Array]:
    fields.require(self, positive=("num_levels", "num_components"),
                   positive_real=("smoothing", "init_weight"))
    if not self.init_weight < 1:
      raise UsageError(f"PixelMixture.init_weight must be in (0, 1), got {self.init_weight}")
    m, k = self.num_components, self.num_levels

    def init_logits(rng):
      data = _need_data(x)
      marginal = jnp.exp(smoothed_log_frequencies(data, k, self.smoothing))
      idx = jax.random.choice(rng, data.shape[0], (m,), replace=data.shape[0] < m)
      levels, _ = as_levels(data[idx], k)
      onehot = jax.nn.one_hot(levels.reshape(m, *data.shape[1:]), k)
      return jnp.log(self.init_weight * onehot + (1 - self.init_weight) * marginal)

    weights = _param(self, "mixture_logits", lambda _: jnp.zeros((m,)))
    logits = _param(self, "logits", init_logits)
    return weights, logits

  def component_log_probs(self, x: Array) -> Array:
    """[N, M]: log p_m(x) of every component (valid images only)."""
    _, logits = self(x)
    m = logits.shape[0]
    log_p = jax.nn.log_softmax(logits, -1).reshape(m, -1, self.num_levels)
    levels, _ = as_levels(x, self.num_levels)
    return jnp.sum(_pixel_log_probs(log_p, levels), -1).T

  def log_prob(self, x: Array) -> Array:
    weights, _ = self(x)
    comp = self.component_log_probs(x) + jax.nn.log_softmax(weights)
    _, valid = as_levels(x, self.num_levels)
    return jnp.where(valid, jax.nn.logsumexp(comp, -1), -jnp.inf)

  def marginals(self) -> Array:
    """[H, W, C, K] per-pixel level probabilities: sum_m w_m p_m."""
    weights, logits = self()
    w = jax.nn.softmax(weights)
    return jnp.einsum("m,m...->...", w, jax.nn.softmax(logits, -1))

  def sample(self, rng: Array, n: int) -> Array:
    weights, logits = self()
    k_rng, x_rng = jax.random.split(rng)
    comp = sample_levels(k_rng, jax.nn.log_softmax(weights), (n,))
    log_p = jax.nn.log_softmax(logits, -1)[comp]
    return sample_levels(x_rng, log_p, log_p.shape[:-1])

  def diagnostics(self, x: Array) -> dict[str, Array]:
    """The effective number of components, exp(entropy of the weights)."""
    del x
    w = jax.nn.softmax(self()[0])
    return {"effective_components": jnp.exp(-jnp.sum(w * jnp.log(w + 1e-30)))}

  def num_free_params(self, params) -> int:
    m, *pixels, k = params["logits"].shape
    return (m - 1) + m * math.prod(pixels) * (k - 1)


def _param(module: nn.Module, name: str, init):
  """``module.param(name, init)``; an existing parameter is returned as it is
  (Flax would trace ``init`` to check its shape, and ``init`` needs the data)."""
  if module.has_variable("params", name):
    return module.get_variable("params", name)
  return module.param(name, init)


def _need_data(x):
  if x is None:
    raise UsageError("an image model is initialised from training images: "
                     "model.init(rng, x_train, method='log_prob')")
  return x


def image_unit(num_steps=0, learning_rate=1e-2, batch_size=256,
               **model) -> ml_collections.ConfigDict:
  """An image model's config unit: Adam with warmup and cosine decay, gradients
  clipped at 1, batches of 256, held-out evaluation every 500 steps (the
  bits/dim-against-time curve) in batches of 1,000 (a mixture holds [batch,
  components, pixels] log-probabilities)."""
  return experiment.unit(
      model,
      train=dict(num_steps=num_steps, batch_size=batch_size, log_every=100,
                 checkpoint_every=500, eval_every=500, eval_batch_size=1000,
                 steps_per_dispatch=10),
      optimizer=dict(name="adam", learning_rate=learning_rate,
                     schedule="warmup_cosine", warmup_steps=100, grad_clip=1.0))


def _shrink_mixture(u):
  u.model.num_components = 4


INDEPENDENT_PIXELS = base.ModelCard(
    "independent_pixels", IndependentPixels, "tractable", "baseline",
    "independent pixels", unit=image_unit, fixed=("num_levels",), groups=("images",))
PIXEL_MIXTURE = base.ModelCard(
    "pixel_mixture", PixelMixture, "tractable", "mixture",
    "mixture of independent pixels",
    unit=lambda: image_unit(num_steps=3000, learning_rate=1e-2, num_components=32),
    smoke=_shrink_mixture, fixed=("num_levels",), groups=("images",))
