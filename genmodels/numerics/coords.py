"""The one coordinate transform: an affine map between data units and model units.

Every gradient-trained density model works in normalised units u, so that one
learning rate suits all of them, and maps a data point x (longitude, latitude
in degrees) there per axis by

    u = (x - loc) / scale,    x = u * scale + loc,    log |dx/du| = sum log scale,

so that log p_x(x) = log p_u(u) - sum log scale. Three conventions name loc and
scale:

* ``Affine.standardise(loc, scale)``: given (a data mean and spread: the
  Gaussians, the mixture, the continuous-time models);
* ``Affine.centred(lo, hi)``: the box [lo, hi] onto [-1, 1]^D (centre and
  half-width: RealNVP, the VAE, the GAN);
* ``Affine.unit_box(lo, hi)``: the box onto [0, 1]^D (corner and width: the
  spline flow, the energy model, the autoregressive model).

The constants are computed in float64 from the config's numbers and rounded
once to float32; the log-Jacobian stays a float64 Python float. The map itself
is two float32 operations each way, (x - loc) / scale and u * scale + loc, in
that order.

``FAR``: no model's support reaches more than FAR scales from its box
(``beyond``); ``mask_log_prob`` gives those points, and points with an
infinite coordinate, log-density -inf instead of what float32 arithmetic makes
of them (inf - inf = NaN).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# Normalised units beyond which a point is outside every model's support: a
# point 1e6 box-widths away is no point of the map, and the networks' float32
# arithmetic overflows to inf - inf = NaN long before 1e30.
FAR = 1e6


@dataclasses.dataclass(frozen=True, eq=False)
class Affine:
  """x = u * scale + loc per axis; ``loc`` and ``scale`` are float64 [D]."""
  loc: np.ndarray
  scale: np.ndarray

  @classmethod
  def standardise(cls, loc: Sequence[float], scale: Sequence[float]) -> Affine:
    """u = (x - loc) / scale for a given loc and scale."""
    return cls(np.asarray(loc, np.float64), np.asarray(scale, np.float64))

  @classmethod
  def centred(cls, lo: Sequence[float], hi: Sequence[float]) -> Affine:
    """The box [lo, hi] onto [-1, 1]^D: loc its centre, scale its half-width."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    return cls((lo + hi) / 2, (hi - lo) / 2)

  @classmethod
  def unit_box(cls, lo: Sequence[float], hi: Sequence[float]) -> Affine:
    """The box [lo, hi] onto [0, 1]^D: loc its lower corner, scale its width."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    return cls(lo, hi - lo)

  @staticmethod
  def _dtype(a) -> np.dtype:
    dtype = getattr(a, "dtype", None)
    return dtype if dtype is not None and jnp.issubdtype(dtype, jnp.floating) \
        else np.dtype(np.float32)

  def to_unit(self, x: Array) -> Array:
    """u = (x - loc) / scale, in x's floating dtype (float32 otherwise)."""
    dtype = self._dtype(x)
    return (x - self.loc.astype(dtype)) / self.scale.astype(dtype)

  def from_unit(self, u: Array) -> Array:
    """x = u * scale + loc."""
    dtype = self._dtype(u)
    return u * self.scale.astype(dtype) + self.loc.astype(dtype)

  def log_scale(self, axis: int) -> float:
    """log scale of one axis (float64)."""
    return float(np.log(self.scale[axis]))

  @property
  def log_det(self) -> float:
    """log |dx/du| = sum log scale (float64): log p_x = log p_u - log_det."""
    return float(np.sum(np.log(self.scale)))

  def beyond(self, x: Array, far: float = FAR) -> Array:
    """[N]: True where a coordinate lies more than ``far`` scales from the
    unit region (or is infinite); False for NaN coordinates."""
    u = self.to_unit(x)
    return jnp.any(jnp.abs(u) > far, -1)


def mask_log_prob(x: Array, log_p: Array, inside: Array | None = None,
                  affine: Affine | None = None) -> Array:
  """log_p [..., N] with -inf for points outside the support, NaN for NaN points.

  Outside: where ``inside`` [N] is False, where a coordinate is infinite, and,
  with ``affine``, beyond ``FAR`` of its units (``Affine.beyond``). Points with
  a NaN coordinate give NaN whatever the model computed.
  """
  out = jnp.any(jnp.isinf(x), -1)
  if inside is not None:
    out = out | ~inside
  if affine is not None:
    out = out | affine.beyond(x)
  log_p = jnp.where(out, -jnp.inf, log_p)
  return jnp.where(jnp.any(jnp.isnan(x), -1), jnp.nan, log_p)
