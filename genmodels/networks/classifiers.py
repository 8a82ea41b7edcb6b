"""Image classifiers of *Generative Deep Learning* ch. 2, in Flax linen.

Every model maps NHWC images to logits with `model.apply(variables, x, train=...)`.
Float inputs are used as given (the data module scales them to [0, 1]); integer
(uint8) inputs are scaled by 1/255. `dtype` is the computation dtype (e.g.
jnp.bfloat16); parameters stay float32. Add a model by adding it to CLASSIFIERS.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from genmodels.errors import UsageError


def _as_float(x, dtype) -> jnp.ndarray:
  """Images as `dtype`; integer images are scaled from [0, 255] to [0, 1]."""
  x = jnp.asarray(x)
  if jnp.issubdtype(x.dtype, jnp.integer):
    return x.astype(dtype) / 255
  return x.astype(dtype)


class MLP(nn.Module):
  """Flatten -> Dense 200 ReLU -> Dense 150 ReLU -> Dense num_classes."""

  num_classes: int = 10
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    del train  # no train-only layers
    x = _as_float(x, self.dtype).reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(200, dtype=self.dtype)(x))
    x = nn.relu(nn.Dense(150, dtype=self.dtype)(x))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)


def im2col_conv(lhs, rhs, window_strides, padding, lhs_dilation=None,
                rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                precision=None):
  """`lax.conv_general_dilated` for NHWC x HWIO as im2col and one matmul.

  The padded input's kh*kw shifted (strided) views are concatenated along the
  channels into patches [N, H', W', kh*kw*C] and multiplied by the kernel
  reshaped to [kh*kw*C, O]: the same sums as the convolution, in another order.
  Its gradients are matmuls plus pads and slices, so XLA:CPU runs all of them
  through its matmul library, also inside `lax.scan` (the engine's multi-step),
  where it runs the weight-gradient convolution as a slow naive loop (see
  benchmarks/README.md). Drop-in for flax's `nn.Conv(conv_general_dilated=...)`.
  """
  kh, kw, cin, cout = rhs.shape
  if (lhs.ndim != 4 or feature_group_count != 1
      or any(d not in (None, 1) for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))):
    raise NotImplementedError("im2col_conv supports 2-D, ungrouped, undilated "
                              "convolutions only")
  if dimension_numbers is not None and tuple(dimension_numbers.lhs_spec) != (0, 3, 1, 2):
    raise NotImplementedError(f"im2col_conv needs NHWC inputs, got {dimension_numbers}")
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], (kh, kw), window_strides, padding)
  x = jnp.pad(lhs, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
  sh, sw = window_strides
  ho, wo = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
  views = [lax.slice(x, (0, i, j, 0),
                     (x.shape[0], i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, cin),
                     (1, sh, sw, 1))
           for i in range(kh) for j in range(kw)]
  patches_NxHxWxK = jnp.concatenate(views, axis=-1)  # K = (i, j, c), as rhs's layout
  return lax.dot_general(patches_NxHxWxK, rhs.reshape(kh * kw * cin, cout),
                         (((3,), (0,)), ((), ())), precision=precision)


CONV_IMPLS = ("xla", "im2col")


def conv_function(conv_impl: str):
  """flax `nn.Conv`'s `conv_general_dilated` for a `conv_impl` name (None: lax's)."""
  if conv_impl not in CONV_IMPLS:
    raise UsageError(f"unknown conv_impl {conv_impl!r}; valid: {', '.join(CONV_IMPLS)}")
  return im2col_conv if conv_impl == "im2col" else None


def _train_or_eval_conv(conv_impl: str, train: bool):
  """``conv_impl``'s function in training; lax.conv in evaluation (no weight
  gradient, no scan: the conv library is fastest there on every backend)."""
  conv_fn = conv_function(conv_impl)  # a bad name fails in either mode
  return conv_fn if train else None


class CNN(nn.Module):
  """The book's Keras CNN: 4 x (Conv 3x3, BatchNorm, LeakyReLU 0.3), then
  Dense 128, BatchNorm, LeakyReLU, Dropout 0.5, Dense num_classes.

  BatchNorm matches Keras (momentum 0.99, epsilon 1e-3): batch statistics and a
  `batch_stats` update when `train`, running averages otherwise. Dropout draws
  from the 'dropout' rng when `train`.

  `conv_impl` picks how the convolutions train, with the same parameters (names,
  shapes, values) and the same outputs up to float rounding: "xla"
  (`lax.conv_general_dilated`, the default) or "im2col" (`im2col_conv`, much
  faster to train on CPU inside the engine's `lax.scan`; see benchmarks/).
  Evaluation (``train=False``) has no weight gradient and runs outside the
  scan, so it always takes `lax.conv` (the conv library; on CPU 1.6x faster
  than im2col's large patch copies at evaluation batch sizes).
  """

  num_classes: int = 10
  dtype: Any = jnp.float32
  conv_impl: str = "xla"

  @nn.compact
  def __call__(self, x, train: bool):
    def norm_act(x):
      x = nn.BatchNorm(use_running_average=not train, momentum=0.99,
                       epsilon=1e-3, dtype=self.dtype)(x)
      return nn.leaky_relu(x, negative_slope=0.3)

    conv_fn = _train_or_eval_conv(self.conv_impl, train)
    x = _as_float(x, self.dtype)
    for filters, stride in ((32, 1), (32, 2), (64, 1), (64, 2)):
      x = nn.Conv(filters, (3, 3), strides=stride, padding="SAME", dtype=self.dtype,
                  conv_general_dilated=conv_fn)(x)
      x = norm_act(x)
    x = x.reshape((x.shape[0], -1))
    x = norm_act(nn.Dense(128, dtype=self.dtype)(x))
    x = nn.Dropout(0.5, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)


def space_to_depth(x, block: int = 2):
  """[N, H, W, C] -> [N, H/block, W/block, block*block*C]: each block's pixels as channels."""
  n, h, w, c = x.shape
  if h % block or w % block:
    raise UsageError(f"space_to_depth needs H and W divisible by {block}, got {x.shape}")
  x = x.reshape(n, h // block, block, w // block, block, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, h // block, w // block, block * block * c)


def max_pool_2x2(x):
  """2x2 max pooling with stride 2 as a reshape and a max (no select-and-scatter)."""
  n, h, w, c = x.shape
  return x[:, :h - h % 2, :w - w % 2].reshape(n, h // 2, 2, w // 2, 2, c).max((2, 4))


class FastCNN(nn.Module):
  """A CNN built for CPU seconds rather than FLOPs: the `fast` recipe's model.

  On CPU the book CNN's step time is mostly memory traffic at full resolution
  (BatchNorm, activations, im2col copies; benchmarks/README.md), so this one
  never convolves at full resolution: a 2x2 space-to-depth stem turns 28x28x1
  into 14x14x4 losslessly, then (Conv 3x3, BatchNorm, ReLU) for the first
  ``len(widths) // 2`` widths at 14x14, 2x2 max pooling, the rest at 7x7, and
  the book's head (Dense, BatchNorm, ReLU, Dropout, Dense). The defaults (one
  conv at 14x14, two at 7x7, no dropout) are the `fast` recipe's:
  under half the book CNN's time per image on 2 CPU cores.
  """

  num_classes: int = 10
  widths: tuple[int, ...] = (32, 64, 64)
  hidden: int = 128
  dropout: float = 0.0
  dtype: Any = jnp.float32
  conv_impl: str = "im2col"

  @nn.compact
  def __call__(self, x, train: bool):
    def norm_act(x):
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                       epsilon=1e-5, dtype=self.dtype)(x)
      return nn.relu(x)

    conv_fn = _train_or_eval_conv(self.conv_impl, train)
    x = space_to_depth(_as_float(x, self.dtype))
    half = len(self.widths) // 2
    for i, filters in enumerate(self.widths):
      if i == half:
        x = max_pool_2x2(x)
      x = norm_act(nn.Conv(filters, (3, 3), padding="SAME", dtype=self.dtype,
                           conv_general_dilated=conv_fn)(x))
    x = x.reshape((x.shape[0], -1))
    x = norm_act(nn.Dense(self.hidden, dtype=self.dtype)(x))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)


CLASSIFIERS: dict[str, type[nn.Module]] = {"mlp": MLP, "cnn": CNN, "cnn_fast": FastCNN}


def get_classifier(name: str, **kwargs) -> nn.Module:
  """Builds the classifier registered as `name`, e.g. get_classifier("cnn", dtype=jnp.bfloat16)."""
  if name not in CLASSIFIERS:
    raise UsageError(f"unknown classifier {name!r}; valid names: {', '.join(sorted(CLASSIFIERS))}")
  return CLASSIFIERS[name](**kwargs)
