"""The VAE's networks (``genmodels.models.vae``): Gaussian encoders and decoders.

``Encoder`` q(z | u) and ``Decoder`` p(u | z) start at the identity map
(erf and its inverse, see the VAE's module docstring) with MLPs on Fourier
features; ``LinearEncoder`` and ``LinearDecoder`` make the linear-Gaussian VAE
whose marginal is known in closed form.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from genmodels.numerics.features import fourier_features
from genmodels.numerics.gaussians import cholesky_from_raw, num_cholesky_params, scale_head

Array = jax.Array
EDGE = 1e-4  # the encoder's skip clips u to [-1 + EDGE, 1 - EDGE] (|z| <= 3.7)


def mlp(h: Array, hidden: int, depth: int) -> Array:
  for _ in range(depth):
    h = nn.silu(nn.Dense(hidden)(h))
  return h


class GaussianNet(nn.Module):
  """MLP on Fourier features -> a Gaussian's mean [..., out_dim] and Cholesky factor."""
  out_dim: int
  hidden: int = 256
  depth: int = 3
  num_frequencies: int = 16
  full_covariance: bool = True
  min_scale: float = 1e-3
  init_scale: float | None = None

  @nn.compact
  def __call__(self, u: Array, skip: Array | None = None) -> tuple[Array, Array]:
    """With ``skip`` [..., out_dim], the mean is skip + MLP with a zero last layer."""
    h = mlp(fourier_features(u, int(self.num_frequencies)), self.hidden, self.depth)
    if skip is None:
      mean = nn.Dense(self.out_dim, name="mean")(h)
    else:
      mean = skip + nn.Dense(self.out_dim, kernel_init=nn.initializers.zeros,
                             name="mean")(h)
    return mean, scale_head(h, self.out_dim, self.full_covariance, self.min_scale,
                            self.init_scale)


def _fit_width(v: Array, width: int) -> Array:
  """The first ``width`` coordinates of v, zero-padded if v has fewer."""
  if v.shape[-1] >= width:
    return v[..., :width]
  return jnp.concatenate([v, jnp.zeros((*v.shape[:-1], width - v.shape[-1]), v.dtype)], -1)


class Encoder(nn.Module):
  """q(z | u): a GaussianNet on Fourier features of u, around the identity start.

  The mean is sqrt(2) erfinv(u) (the latent point whose erf(z / sqrt 2) is u:
  the decoder's identity start inverted) plus the network's correction, which
  starts at zero; the Cholesky factor starts at init_scale * I.
  """
  latent_dim: int = 2
  hidden: int = 256
  depth: int = 3
  num_frequencies: int = 16
  full_covariance: bool = True
  min_scale: float = 1e-3
  init_scale: float | None = 0.05

  @nn.compact
  def __call__(self, u: Array) -> tuple[Array, Array]:
    skip = np.sqrt(2.0) * jax.scipy.special.erfinv(jnp.clip(u, -1 + EDGE, 1 - EDGE))
    return GaussianNet(self.latent_dim, self.hidden, self.depth, self.num_frequencies,
                       self.full_covariance, self.min_scale, self.init_scale,
                       name="net")(u, _fit_width(skip, self.latent_dim))


class Decoder(nn.Module):
  """p(u | z): residual warps of t = erf(z / sqrt 2) in (-1, 1), then a Gaussian.

  The mean is y_B, where y_0 = t (its first out_dim coordinates) and

      y_{b+1} = y_b + MLP_b(Fourier features of y_b),   b < blocks,

  each MLP with ``depth`` hidden layers and a last layer that starts at zero, so
  a fresh decoder maps the prior uniformly onto the box. Re-taking Fourier
  features of the warped point (as a flow's layers do) makes the map sharp where
  a block stretches space, for the cost of one MLP of blocks * depth layers.
  The Cholesky factor comes from the last block's hidden layer.
  """
  out_dim: int = 2
  hidden: int = 256
  depth: int = 4
  blocks: int = 1
  num_frequencies: int = 16
  full_covariance: bool = True
  min_scale: float = 1e-3
  init_scale: float | None = 0.05

  @nn.compact
  def __call__(self, z: Array) -> tuple[Array, Array]:
    t = jax.scipy.special.erf(z / np.sqrt(2.0))
    y, feats = _fit_width(t, self.out_dim), t
    for b in range(self.blocks):
      h = mlp(fourier_features(feats, int(self.num_frequencies)), self.hidden, self.depth)
      y = y + nn.Dense(self.out_dim, kernel_init=nn.initializers.zeros,
                       name=f"mean_{b}")(h)
      feats = y
    return y, scale_head(h, self.out_dim, self.full_covariance, self.min_scale,
                         self.init_scale)


class LinearEncoder(nn.Module):
  """q(z | u) = N(A u + c, L L^T) with one constant full Cholesky factor L."""
  latent_dim: int

  @nn.compact
  def __call__(self, u: Array) -> tuple[Array, Array]:
    mean = nn.Dense(self.latent_dim, name="mean")(u)
    raw = self.param("scale", nn.initializers.zeros,
                     (num_cholesky_params(self.latent_dim, True),))
    chol = cholesky_from_raw(raw, self.latent_dim, True, 0.0)
    return mean, jnp.broadcast_to(chol, (*mean.shape, self.latent_dim))


class LinearDecoder(nn.Module):
  """p(u | z) = N(W z + b, sigma^2 I)."""
  out_dim: int = 2

  @nn.compact
  def __call__(self, z: Array) -> tuple[Array, Array]:
    mean = nn.Dense(self.out_dim, name="mean")(z)
    raw = self.param("scale", nn.initializers.zeros, ())
    sigma = jax.nn.softplus(raw)
    chol = sigma * jnp.eye(self.out_dim, dtype=mean.dtype)
    return mean, jnp.broadcast_to(chol, (*mean.shape, self.out_dim))
