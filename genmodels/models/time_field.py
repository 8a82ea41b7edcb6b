"""The continuous-time models' network and training helpers (``continuous``).

``TimeField``: the time-dependent MLP f(u, t) of flow matching and diffusion,
on (noise-damped) Fourier features; ``stratified`` training times and the
stable target's ``posterior_weights`` over a batch.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from genmodels.numerics.features import fourier_features

Array = jax.Array


def stratified(rng: Array, like: Array) -> Array:
  """One uniform in each [i/B, (i+1)/B), B = len(like): times with less variance."""
  n = like.shape[0]
  return (jnp.arange(n, dtype=like.dtype) + jax.random.uniform(rng, (n,), like.dtype)) / n


def posterior_weights(ut: Array, coef: Array, data: Array, scale: Array) -> Array:
  """[B, B] softmax_j log N(ut_i; coef_i data_j, scale_i^2 I): whose noised copy u_t is.

  The stable target field (Xu et al., 2023): regressing on the posterior mean
  of the target over a reference batch, rather than on one sample's target,
  has the same minimiser as B grows and far less variance at high noise. The
  reference set is the batch itself, so j = i is always a candidate and at low
  noise the weights tend to [i == j]. coef and scale are [B, 1]. Cost: B^2
  pair distances (B = 1024: a few per cent of a training step); skipped at
  initialisation, which the engine may run on the whole training set.
  """
  d2 = jnp.sum((ut[:, None, :] - coef[:, None, :] * data[None, :, :])**2, -1)
  return jax.lax.stop_gradient(jax.nn.softmax(-0.5 * d2 / scale**2, axis=-1))


class TimeField(nn.Module):
  """MLP f(u, t, blur) -> [N, out] on Fourier features of u and t, SiLU activations.

  Features of u: u and sin/cos at ``num_frequencies`` frequencies spaced
  geometrically from 1 to ``max_frequency`` (radians per standardised unit).
  Features of t in [0, 1]: t and sin/cos(pi k t), k = 1..time_frequencies. The
  time features are also added to every hidden layer through its own Dense (a
  cheap per-layer time conditioning). The last layer starts at zero.

  ``blur`` [N] (optional) is the noise level of u_t measured in data units:
  each frequency f of u is damped by exp(-(f blur)^2 / 2), which is exactly
  what Gaussian noise of that size does to a sinusoid of the data density.
  Frequencies the noisy density cannot contain are then absent from the
  network's input, which keeps the field smooth at high noise (an ODE easy to
  integrate) while the clean end keeps the full resolution.
  """
  out: int = 2
  hidden: int = 256
  depth: int = 4
  num_frequencies: int = 16
  max_frequency: float = 100.0
  time_frequencies: int = 8

  @nn.compact
  def __call__(self, u: Array, t: Array, blur: Array | None = None) -> Array:
    batch = u.shape[:-1]
    t = jnp.broadcast_to(jnp.asarray(t, u.dtype), batch)[..., None]
    freqs = jnp.asarray(np.geomspace(1.0, self.max_frequency, self.num_frequencies)
                        if self.num_frequencies else np.zeros((0,)), u.dtype)
    fx = fourier_features(u, freqs, blur)
    ft = fourier_features(t, int(self.time_frequencies))
    h = nn.Dense(self.hidden)(jnp.concatenate([fx, ft], -1))
    for _ in range(self.depth - 1):
      h = nn.silu(h)
      h = nn.Dense(self.hidden)(h) + nn.Dense(self.hidden, use_bias=False)(ft)
    return nn.Dense(self.out, kernel_init=nn.initializers.zeros)(nn.silu(h))
