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


class CNN(nn.Module):
  """The book's Keras CNN: 4 x (Conv 3x3, BatchNorm, LeakyReLU 0.3), then
  Dense 128, BatchNorm, LeakyReLU, Dropout 0.5, Dense num_classes.

  BatchNorm matches Keras (momentum 0.99, epsilon 1e-3): batch statistics and a
  `batch_stats` update when `train`, running averages otherwise. Dropout draws
  from the 'dropout' rng when `train`.
  """

  num_classes: int = 10
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    def norm_act(x):
      x = nn.BatchNorm(use_running_average=not train, momentum=0.99,
                       epsilon=1e-3, dtype=self.dtype)(x)
      return nn.leaky_relu(x, negative_slope=0.3)

    x = _as_float(x, self.dtype)
    for filters, stride in ((32, 1), (32, 2), (64, 1), (64, 2)):
      x = nn.Conv(filters, (3, 3), strides=stride, padding="SAME", dtype=self.dtype)(x)
      x = norm_act(x)
    x = x.reshape((x.shape[0], -1))
    x = norm_act(nn.Dense(128, dtype=self.dtype)(x))
    x = nn.Dropout(0.5, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)


CLASSIFIERS: dict[str, type[nn.Module]] = {"mlp": MLP, "cnn": CNN}


def get_classifier(name: str, **kwargs) -> nn.Module:
  """Builds the classifier registered as `name`, e.g. get_classifier("cnn", dtype=jnp.bfloat16)."""
  if name not in CLASSIFIERS:
    raise ValueError(f"unknown classifier {name!r}; valid names: {', '.join(sorted(CLASSIFIERS))}")
  return CLASSIFIERS[name](**kwargs)
