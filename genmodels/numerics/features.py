"""Fourier features of points: what lets a small MLP draw coastlines.

A coordinate network on raw (lon, lat) is smooth at the scale of the whole box
(spectral bias); the sines and cosines of pi k u, k = 1..K, give its first layer
every scale down to 1/K of the box. Every network on the map (flow
conditioners, the autoregressive conditional, the energy, the VAE's encoder and
decoder, the GAN's two players, the continuous-time fields) takes its input
through ``fourier_features``.
"""

import jax
import jax.numpy as jnp

Array = jax.Array


def harmonics(num_frequencies: int, dtype=jnp.float32) -> Array:
  """pi k for k = 1..num_frequencies: the frequencies whose periods divide 2."""
  return jnp.pi * jnp.arange(1, int(num_frequencies) + 1, dtype=dtype)


def fourier_features(u: Array, freqs: Array | int, blur: Array | None = None,
                     linear: Array | None = None) -> Array:
  """[..., D] -> [..., D (1 + 2F)]: ``linear`` (default u), sin(f u), cos(f u).

  ``freqs`` is an array of F frequencies or an int K (``harmonics(K)``); the
  features are ordered per coordinate, then per frequency. With ``blur`` [...]
  the sines and cosines are multiplied by exp(-(f blur)^2 / 2), which is their
  expectation when u is perturbed by N(0, blur^2) noise.
  """
  if isinstance(freqs, int):
    freqs = harmonics(freqs, u.dtype)
  batch = u.shape[:-1]
  angles = u[..., :, None] * freqs  # [..., D, F]
  sin, cos = jnp.sin(angles), jnp.cos(angles)
  if blur is not None:
    blur = jnp.broadcast_to(jnp.asarray(blur, u.dtype), batch)[..., None, None]
    amp = jnp.exp(-0.5 * (freqs * blur)**2)
    sin, cos = amp * sin, amp * cos
  return jnp.concatenate([u if linear is None else linear,
                          sin.reshape(*batch, -1), cos.reshape(*batch, -1)], -1)
