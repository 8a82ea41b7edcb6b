"""PixelCNN (Generative Deep Learning ch. 5; van den Oord et al. 2016) on integer images.

The chain rule in raster order factorises the image's mass exactly,

    p(x) = prod_i p(x_i | x_<i),     i = 0 .. H*W - 1 (row by row),

and one network computes every conditional at once: each convolution's
kernel is multiplied by a constant causal mask, so the output at pixel i is a
function of the input pixels j < i only. Mask "A" (the first 7x7 layer) keeps
the kernel rows above the centre and the centre row left of the centre; mask
"B" (every later 3x3 layer) also keeps the centre, since after layer A the
feature at pixel i already sees only x_<i. With one channel (C = 1) there is
no within-pixel channel order to mask.

The book's network: a 7x7 mask-A conv with ``filters`` channels (ReLU);
``num_blocks`` residual blocks, each a 1x1 conv to filters/2, a 3x3 mask-B
conv, a 1x1 conv back to ``filters`` (each with ReLU, as the book's Keras
layers) added to the block's input; two 1x1 mask-B convs (ReLU); then the
head. A 1x1 mask-B kernel is all ones, so the 1x1 layers are dense layers on
the channels. Input levels k are scaled to k/(K-1)*2 - 1 in [-1, 1].

Heads (``head``; "auto" is "categorical" for K <= 16, "logistic_mixture"
otherwise):

* ``categorical``: K logits per pixel; log p(x_i | x_<i) is the log-softmax
  at the observed level (the book's softmax output).
* ``logistic_mixture``: PixelCNN++'s discretised mixture of ``num_mixtures``
  logistics, for one channel. Level k has centre c_k = k/(K-1)*2 - 1 and the
  bin [c_k - h, c_k + h], h = 1/(K-1), with the first bin extended to -inf
  and the last to +inf, so the K bins tile the line and the masses sum to 1:
  P(k) = sum_m w_m [sigmoid(a_m) - sigmoid(b_m)], a_m, b_m = (c_k +- h - mu_m)/s_m.
  ``discretized_logistic_log_prob`` computes it without cancellation.

``log_prob`` is the exact log mass (-inf for a value outside the levels);
``sample`` is exact ancestral sampling: H*W network evaluations in a
``lax.fori_loop``, pixel i drawn from its conditional given the pixels drawn
before it (later pixels are still 0 and, by the masks, not seen).
"""

from __future__ import annotations


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from genmodels.errors import UsageError
from genmodels.images.models import as_levels, image_unit, sample_levels
from genmodels.models import base
from genmodels.models import fields
from genmodels.networks import classifiers

Array = jax.Array
HEADS = ("auto", "categorical", "logistic_mixture")
LOG_SCALE_RANGE = (-7.0, 7.0)  # PixelCNN++'s floor; the ceiling keeps s finite


def causal_mask(kernel_size: int, mask_type: str) -> np.ndarray:
  """[k, k] float mask: 1 above the centre row and left of the centre in its
  row; the centre itself is 1 for mask "B" and 0 for mask "A"."""
  if mask_type not in ("A", "B"):
    raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
  k = kernel_size
  c = k // 2
  rows, cols = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
  keep = (rows < c) | ((rows == c) & (cols < c))
  if mask_type == "B":
    keep |= (rows == c) & (cols == c)
  return keep.astype(np.float32)


class MaskedConv(nn.Module):
  """A k x k 'SAME' convolution whose HWIO kernel is multiplied by ``causal_mask``."""
  features: int
  kernel_size: int
  mask_type: str

  @nn.compact
  def __call__(self, x: Array, conv_impl: str) -> Array:
    k = self.kernel_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (k, k, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    kernel = kernel * causal_mask(k, self.mask_type)[:, :, None, None]
    conv = classifiers.conv_function(conv_impl) or lax.conv_general_dilated
    dims = lax.conv_dimension_numbers(x.shape, kernel.shape, ("NHWC", "HWIO", "NHWC"))
    return conv(x, kernel, (1, 1), "SAME", dimension_numbers=dims) + bias


def _log_2cosh_half(a: Array) -> Array:
  """|a|/2 + softplus(-|a|) = log(2 cosh(a/2)), stably."""
  return 0.5 * jnp.abs(a) + jax.nn.softplus(-jnp.abs(a))


def discretized_logistic_log_prob(levels: Array, logits: Array, means: Array,
                                  log_scales: Array, num_levels: int) -> Array:
  """log P(level) under a mixture of logistics discretised to K levels.

  levels [...] integers in {0..K-1}; logits, means, log_scales [..., M].
  Component m's mass of level k is sigmoid(a) - sigmoid(b) with
  a, b = (c_k +- h - mu)/s (h = 1/(K-1), s = exp(log_scale) clipped to
  ``LOG_SCALE_RANGE``); the first bin's lower edge is -inf (mass sigmoid(a)),
  the last's upper edge +inf (mass sigmoid(-b)). An interior bin uses the
  identity sigmoid(a) - sigmoid(b) = sinh(d) / (2 cosh(a/2) cosh(b/2)),
  d = (a - b)/2, so with L(t) = log(2 cosh(t/2)) = |t|/2 + softplus(-|t|),

      log P = log sinh(d) + log 2 - L(a) - L(b) = d + log(-expm1(-2d)) - L(a) - L(b),

  which has no difference of nearly equal numbers for any a, b, s (the
  midpoint-density fallback of PixelCNN++, an approximation below 1e-5, is
  not needed). Each edge is one float shared by the two bins it separates,
  and d is computed from those floats, so the K masses telescope to 1 up to
  a few float32 roundings even where s is far below the bin width. Returns [...].
  """
  k1 = num_levels - 1
  inv_s = jnp.exp(-jnp.clip(log_scales, *LOG_SCALE_RANGE))

  def standardised_edge(j):  # (c_j + h - mu)/s, one float expression for every use
    edge = (2 * j + 1).astype(jnp.float32) / k1 - 1.0
    return (edge[..., None] - means) * inv_s

  a = standardised_edge(levels)  # upper edge of bin k: the lower edge of bin k + 1
  b = standardised_edge(levels - 1)
  d = 0.5 * (a - b)  # = h/s; from a and b themselves, so the bins telescope
  interior = d + jnp.log(-jnp.expm1(-2.0 * d)) - _log_2cosh_half(a) - _log_2cosh_half(b)
  lvl = levels[..., None]
  lp = jnp.where(lvl == 0, jax.nn.log_sigmoid(a),
                 jnp.where(lvl == k1, jax.nn.log_sigmoid(-b), interior))
  return jax.nn.logsumexp(jax.nn.log_softmax(logits, -1) + lp, -1)


class PixelCNN(base.DensityModel):
  """The book's PixelCNN over images [N, H, W, 1] with ``num_levels`` levels.

  Fields: ``filters`` (the book's 128), ``num_blocks`` residual blocks (5),
  ``head`` (see the module docstring), ``num_mixtures`` logistics for the
  mixture head, ``conv_impl`` ("im2col" | "xla": how the 7x7 and 3x3 masked
  convs run; im2col's gradients are matmuls, fast on CPU inside the
  engine's scan). Sampling always takes lax's conv (no gradient there).
  """
  num_levels: int = 4
  image_shape: tuple[int, int, int] = (16, 16, 1)
  filters: int = 32
  num_blocks: int = 3
  head: str = "auto"
  num_mixtures: int = 5
  conv_impl: str = "im2col"

  def resolved_head(self) -> str:
    if self.head not in HEADS:
      raise UsageError(f"PixelCNN.head must be one of {', '.join(HEADS)}, "
                       f"got {self.head!r}")
    if self.head == "auto":
      return "categorical" if self.num_levels <= 16 else "logistic_mixture"
    return self.head

  def _check(self) -> None:
    fields.require(self, positive=("num_levels", "filters", "num_blocks", "num_mixtures"),
                   positive_pairs=("image_shape",))
    if self.num_levels < 2:
      raise UsageError(f"PixelCNN.num_levels must be >= 2, got {self.num_levels}")
    if self.filters < 2:
      raise UsageError(f"PixelCNN.filters must be >= 2 (blocks use filters/2), "
                       f"got {self.filters}")
    if len(self.image_shape) != 3 or self.image_shape[2] != 1:
      raise UsageError(f"PixelCNN.image_shape must be (H, W, 1) (one grey channel), "
                       f"got {self.image_shape}")
    classifiers.conv_function(self.conv_impl)
    self.resolved_head()

  @property
  def out_channels(self) -> int:
    if self.resolved_head() == "categorical":
      return self.num_levels
    return 3 * self.num_mixtures

  @nn.compact
  def __call__(self, x_float: Array, conv_impl: str | None = None) -> Array:
    """Scaled images [N, H, W, 1] in [-1, 1] -> head parameters [N, H, W, P];
    the output at pixel i depends on the input pixels before i only."""
    self._check()
    impl = conv_impl or self.conv_impl
    f = self.filters
    h = nn.relu(MaskedConv(f, 7, "A")(x_float, impl))
    for _ in range(self.num_blocks):
      r = nn.relu(nn.Dense(f // 2)(h))
      r = nn.relu(MaskedConv(f // 2, 3, "B")(r, impl))
      h = h + nn.relu(nn.Dense(f)(r))
    for _ in range(2):
      h = nn.relu(nn.Dense(f)(h))
    return nn.Dense(self.out_channels)(h)

  def scale(self, levels: Array) -> Array:
    """Levels k -> k/(K-1)*2 - 1."""
    return levels.astype(jnp.float32) / (self.num_levels - 1) * 2.0 - 1.0

  def level_log_probs(self, out: Array, levels: Array) -> Array:
    """log p(level | head parameters out [..., P]) for levels [...] (broadcast)."""
    if self.resolved_head() == "categorical":
      shape = jnp.broadcast_shapes(out.shape[:-1], levels.shape)
      log_p = jnp.broadcast_to(jax.nn.log_softmax(out, -1), (*shape, out.shape[-1]))
      levels = jnp.broadcast_to(levels, shape)
      return jnp.take_along_axis(log_p, levels[..., None], -1)[..., 0]
    m = self.num_mixtures
    return discretized_logistic_log_prob(
        levels, out[..., :m], out[..., m:2 * m], out[..., 2 * m:], self.num_levels)

  def pixel_log_probs(self, x: Array) -> tuple[Array, Array]:
    """([N, H*W] log p(x_i | x_<i) at the observed levels, [N] in-range flag)."""
    levels, valid = as_levels(x, self.num_levels)
    if self.is_initializing():  # init needs the shapes only, not the whole train set
      levels, valid = levels[:1], valid[:1]
    images = levels.reshape(levels.shape[0], *x.shape[1:])
    out = self(self.scale(images))
    out = out.reshape(levels.shape[0], levels.shape[1], -1)
    return self.level_log_probs(out, levels), valid

  def log_prob(self, x: Array) -> Array:
    lp, valid = self.pixel_log_probs(x)
    return jnp.where(valid, jnp.sum(lp, -1), -jnp.inf)

  @property
  def receptive_rows(self) -> int:
    """Rows above pixel i that its output sees: 3 (7x7 mask A) + 1 per 3x3 conv."""
    return 3 + self.num_blocks

  def window_out(self, params, images: Array, i: Array) -> Array:
    """Head parameters [N, P] of pixel i (raster index, may be traced) of
    images [N, H, W, 1], from the network run on the rows [r0, r0 + R] only
    (R = ``receptive_rows``, r0 = clip(row(i) - R, 0, H - R - 1)): the output
    at row r sees rows r - R .. r, all inside the window, and the zero padding
    above a window with r0 > 0 is outside that range, so the result is the
    whole image's output exactly, for (R + 1)/H of the cost."""
    n, hgt, wid, _ = images.shape
    rows = min(hgt, self.receptive_rows + 1)
    r0 = jnp.clip(i // wid - self.receptive_rows, 0, hgt - rows)
    window = lax.dynamic_slice_in_dim(images, r0, rows, 1)
    out = self.clone(parent=None).apply({"params": params}, self.scale(window), "xla")
    return lax.dynamic_index_in_dim(out.reshape(n, rows * wid, -1),
                                    i - r0 * wid, 1, False)

  def sample(self, rng: Array, n: int) -> Array:
    """Exact ancestral sampling in raster order: for i = 0 .. H*W - 1, the
    network on the image drawn so far (pixels >= i still 0, unseen by the
    masks; see ``window_out``) gives p(x_i | x_<i), and x_i is drawn from it."""
    self._check()
    hgt, wid, _ = self.image_shape
    params = self.variables["params"]
    all_levels = jnp.arange(self.num_levels)

    def step(i, images):
      out_i = self.window_out(params, images, i)
      log_p = self.level_log_probs(out_i[:, None, :], all_levels[None, :])  # [n, K]
      k = sample_levels(jax.random.fold_in(rng, i), log_p, (n,))
      flat = lax.dynamic_update_index_in_dim(images.reshape(n, hgt * wid), k, i, 1)
      return flat.reshape(images.shape)

    return lax.fori_loop(0, hgt * wid, step, jnp.zeros((n, hgt, wid, 1), jnp.int32))


# The book: 128 filters, 5 residual blocks, Adam at 5e-4, batch 128, 150 epochs
# over the training images (here 55,000 after validation: 429 steps an epoch).
BOOK_EPOCHS, BOOK_BATCH, TRAIN_IMAGES = 150, 128, 55_000


def book_sized_unit():
  """The book's sizes (for an accelerator): 128 filters, 5 blocks, Adam 5e-4,
  batch 128, 150 epochs = 150 * (55,000 // 128) = 64,350 steps."""
  return image_unit(num_steps=BOOK_EPOCHS * (TRAIN_IMAGES // BOOK_BATCH),
                    learning_rate=5e-4, batch_size=BOOK_BATCH, filters=128, num_blocks=5)


# CPU default (2 contended cores, im2col, inside the engine's scan): ~100 ms a
# step at 16x16/4 levels and ~340 ms at 28x28/256 at batch 32, so 1,000 steps
# train in ~2 and ~5.5 minutes; lax's conv was 6x slower there (635 / 1827 ms).
DEFAULT_STEPS, DEFAULT_LR, DEFAULT_BATCH = 1500, 2e-3, 32


def default_unit():
  """A CPU-sized PixelCNN: 32 filters, 3 blocks, Adam 2e-3, batch 32, 1,000 steps."""
  return image_unit(num_steps=DEFAULT_STEPS, learning_rate=DEFAULT_LR,
                    batch_size=DEFAULT_BATCH, filters=32, num_blocks=3)


def _shrink(u):
  u.model.filters, u.model.num_blocks = 8, 1


CARD = base.ModelCard(
    "pixelcnn", PixelCNN, "tractable", "autoregressive", "PixelCNN", chapter=5,
    unit=default_unit, smoke=_shrink, fixed=("num_levels", "image_shape"),
    groups=("images",))
