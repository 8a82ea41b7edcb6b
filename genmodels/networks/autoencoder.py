"""An autoencoder with a small latent: pictures -> a few numbers -> pictures.

The encoder flattens an image [B, H, W, C] and maps it through dense layers to
``latent_dim`` numbers; the decoder mirrors it back to an image in [0, 1]
(sigmoid output). ``__call__(x, train)`` returns the reconstruction, like a
classifier's ``__call__``; ``encode`` and ``decode`` expose the two halves, so
a trained model can place pictures in the latent space and draw from any point
of it.

Dense layers, not convolutions: the pictures are 32 x 32 and what the latent
must capture (how wide, how tall) is a global property of the picture, which
a dense layer sees at once; on two CPU cores this trains fastest.
"""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from genmodels.errors import UsageError

_ACTIVATIONS = {"gelu": nn.gelu, "relu": nn.relu, "elu": nn.elu,
                "swish": nn.swish, "tanh": jnp.tanh}


def activation(name: str):
  if name not in _ACTIVATIONS:
    raise UsageError(f"unknown activation {name!r}; valid: {', '.join(_ACTIVATIONS)}")
  return _ACTIVATIONS[name]


class Encoder(nn.Module):
  """Image [B, H, W, C] -> latent [B, latent_dim].

  With ``linear_skip`` the latent is a linear projection of the pixels plus a
  non-linear correction from the dense layers, whose last layer starts at zero:
  at initialisation the encoder is linear, and ``pca_init`` can set that
  projection to the data's first principal components.
  """
  hidden: Sequence[int] = (512, 128)
  latent_dim: int = 2
  act: str = "gelu"
  linear_skip: bool = False

  @nn.compact
  def __call__(self, x_BxHxWxC):
    x = x_BxHxWxC.reshape(x_BxHxWxC.shape[0], -1)
    h = x
    for width in self.hidden:
      h = activation(self.act)(nn.Dense(width)(h))
    if not self.linear_skip:
      return nn.Dense(self.latent_dim, name="to_latent")(h)
    correction = nn.Dense(self.latent_dim, kernel_init=nn.initializers.zeros,
                          name="to_latent")(h)
    return nn.Dense(self.latent_dim, name="linear")(x) + correction


class Decoder(nn.Module):
  """Latent [B, latent_dim] -> image [B, *image_shape] in [0, 1]."""
  image_shape: Sequence[int] = (32, 32, 1)
  hidden: Sequence[int] = (128, 512)
  act: str = "gelu"

  @nn.compact
  def __call__(self, z_BxD):
    h = z_BxD
    for width in self.hidden:
      h = activation(self.act)(nn.Dense(width)(h))
    size = 1
    for d in self.image_shape:
      size *= d
    logits = nn.Dense(size, name="to_pixels")(h)
    return nn.sigmoid(logits).reshape(z_BxD.shape[0], *self.image_shape)


class Autoencoder(nn.Module):
  """``encode``: image -> latent; ``decode``: latent -> image; call: both."""
  image_shape: Sequence[int] = (32, 32, 1)
  hidden: Sequence[int] = (512, 128)
  latent_dim: int = 2
  act: str = "gelu"
  linear_skip: bool = False
  encoder_hidden: Sequence[int] | None = None  # None: the same as ``hidden``.

  def setup(self):
    enc_hidden = self.hidden if self.encoder_hidden is None else self.encoder_hidden
    self.encoder = Encoder(tuple(enc_hidden), self.latent_dim, self.act,
                           self.linear_skip)
    self.decoder = Decoder(tuple(self.image_shape), tuple(reversed(self.hidden)),
                           self.act)

  def encode(self, x_BxHxWxC):
    return self.encoder(x_BxHxWxC)

  def decode(self, z_BxD):
    return self.decoder(z_BxD)

  def __call__(self, x_BxHxWxC, train: bool = False):
    del train  # No dropout or BatchNorm: the same function in training and eval.
    return self.decode(self.encode(x_BxHxWxC))


def principal_components(images, k: int, iterations: int = 30):
  """(mean [P], directions [k, P], standard deviations [k]) of flattened images.

  The top eigenvectors of the pixel covariance by subspace iteration (a few
  products with a [P, k + 8] block; a full eigendecomposition or SVD is much
  slower), deterministic, largest variance first.
  """
  x = np.asarray(images, np.float32).reshape(len(images), -1)
  mean = x.mean(0)
  xc = x - mean
  cov = (xc.T @ xc).astype(np.float64) / len(x)
  q = np.random.default_rng(0).normal(size=(cov.shape[0], min(k + 8, cov.shape[0])))
  for _ in range(iterations):
    q, _ = np.linalg.qr(cov @ q)
  var, vecs = np.linalg.eigh(q.T @ cov @ q)
  order = np.argsort(var)[::-1][:k]
  return (mean.astype(np.float64), (q @ vecs[:, order]).T,
          np.sqrt(np.maximum(var[order], 0.0)))


def pca_init(variables: dict, images, scale: float = 1.0) -> dict:
  """Sets the encoder's linear path to the top principal components.

  The latent then starts as the images' coordinates along their first
  ``latent_dim`` principal directions (what a linear autoencoder learns),
  each scaled to standard deviation ``scale``. Needs ``linear_skip=True``.
  """
  params = variables["params"]
  if "linear" not in params["encoder"]:
    raise UsageError("pca_init needs an Autoencoder with linear_skip=True")
  k = params["encoder"]["linear"]["kernel"].shape[-1]
  mean, directions, std = principal_components(images, k)
  kernel = (directions.T / std * scale).astype(np.float32)
  bias = (-mean @ kernel).astype(np.float32)
  encoder = {**params["encoder"], "linear": {"kernel": jnp.asarray(kernel),
                                             "bias": jnp.asarray(bias)}}
  return {**variables, "params": {**params, "encoder": encoder}}
