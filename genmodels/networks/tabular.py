"""Binary classifiers for tabular features: with and without activations.

Both return one logit per row, ``__call__(x [B, F], train) -> [B]``, with
P(y = 1) = sigmoid(logit).

* ``DeepLinear``: dense layers stacked with *no* activation between them. However
  many layers, it is one affine map x W + b (``compose`` multiplies it out), so
  as a classifier it is logistic regression: its decision boundary is a
  hyperplane and it cannot represent an interaction of two features.
  ``hidden=()`` is plain logistic regression.
* ``MLP``: the same layers with an activation after each hidden one.
"""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from genmodels.errors import UsageError
from genmodels.networks.autoencoder import activation


class DeepLinear(nn.Module):
  """Dense layers of widths (*hidden, 1) without activations: an affine map."""
  hidden: Sequence[int] = (32, 32)

  @nn.compact
  def __call__(self, x_BxF, train: bool = False):
    del train
    h = x_BxF
    for i, width in enumerate(self.hidden):
      h = nn.Dense(width, name=f"layer_{i}")(h)
    return nn.Dense(1, name="out")(h)[..., 0]


class MLP(nn.Module):
  """Dense layers of widths (*hidden, 1) with ``act`` after each hidden one."""
  hidden: Sequence[int] = (32, 32)
  act: str = "relu"

  @nn.compact
  def __call__(self, x_BxF, train: bool = False):
    del train
    h = x_BxF
    for i, width in enumerate(self.hidden):
      h = activation(self.act)(nn.Dense(width, name=f"layer_{i}")(h))
    return nn.Dense(1, name="out")(h)[..., 0]


def compose(params) -> tuple[jnp.ndarray, jnp.ndarray]:
  """The single (W [F, 1], b [1]) that a ``DeepLinear``'s params amount to.

  x W1 + b1, then (x W1 + b1) W2 + b2 = x (W1 W2) + (b1 W2 + b2), and so on.
  """
  names = sorted((k for k in params if k.startswith("layer_")),
                 key=lambda k: int(k.split("_")[1])) + ["out"]
  w, b = None, None
  for name in names:
    wi, bi = params[name]["kernel"], params[name]["bias"]
    w = wi if w is None else w @ wi
    b = bi if b is None else b @ wi + bi
  return w, b


TABULAR_MODELS = {"linear": DeepLinear, "mlp": MLP}


def get_tabular_model(name: str, **kwargs) -> nn.Module:
  if name not in TABULAR_MODELS:
    raise UsageError(f"unknown tabular model {name!r}; valid: "
                     f"{', '.join(TABULAR_MODELS)}")
  return TABULAR_MODELS[name](**kwargs)
