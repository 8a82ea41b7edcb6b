"""Linear probes: what a latent space says about the factors that made the data.

A probe is the affine map latent -> factors fitted by closed-form least
squares; its R^2 on held-out data says how linearly the latent encodes them.
"""

import dataclasses

import numpy as np

from genmodels.errors import UsageError
from genmodels.data import cylinders


@dataclasses.dataclass(frozen=True)
class LinearProbe:
  """y = z W + b, fitted by least squares. W [D, K], b [K]."""
  weight: np.ndarray
  bias: np.ndarray

  def __call__(self, z) -> np.ndarray:
    return np.asarray(z, np.float64) @ self.weight + self.bias

  def inverse(self, y) -> np.ndarray:
    """The latent z with probe(z) = y; needs a square, invertible W."""
    if self.weight.shape[0] != self.weight.shape[1]:
      raise UsageError(f"only a square probe can be inverted, got W of shape "
                       f"{self.weight.shape}")
    return np.linalg.solve(self.weight.T, (np.asarray(y, np.float64) - self.bias).T).T


def fit_linear_probe(z, y) -> LinearProbe:
  """Closed-form least squares with a bias: argmin ||z W + b - y||^2.

  Args:
    z: [N, D] features (the latent).
    y: [N] or [N, K] targets.
  """
  z = np.asarray(z, np.float64)
  y = np.asarray(y, np.float64)
  y2 = y[:, None] if y.ndim == 1 else y
  if z.ndim != 2 or len(z) != len(y2):
    raise UsageError(f"need z [N, D] and y [N, K], got {z.shape} and {y.shape}")
  design = np.concatenate([z, np.ones((len(z), 1))], axis=1)
  coef, *_ = np.linalg.lstsq(design, y2, rcond=None)
  weight, bias = coef[:-1], coef[-1]
  if y.ndim == 1:
    weight, bias = weight[:, 0:1], bias[0:1]
  return LinearProbe(weight=weight, bias=bias)


def r2_score(y, y_pred) -> np.ndarray:
  """Coefficient of determination per column: 1 - SS_res / SS_tot (a scalar for [N])."""
  y = np.asarray(y, np.float64)
  y_pred = np.asarray(y_pred, np.float64).reshape(y.shape)
  ss_res = np.sum(np.square(y - y_pred), axis=0)
  ss_tot = np.sum(np.square(y - y.mean(axis=0)), axis=0)
  return 1.0 - ss_res / ss_tot


def factors(data: cylinders.Cylinders) -> np.ndarray:
  """[N, 2]: (radius, height)."""
  return np.stack([data.radius, data.height], axis=1).astype(np.float64)


def volume_from_latent(probe: LinearProbe, z) -> np.ndarray:
  """pi r^2 h with (r, h) read from the latent by the probe."""
  rh = probe(z)
  return cylinders.volume(rh[:, 0], rh[:, 1])


def walk_grid(probe: LinearProbe, num: int = 7, margin: float = 0.05):
  """(radii [num], heights [num], latent [num, num, 2]) of a walk across the latent.

  The probe's inverse places a grid of (r, h) spanning the data's ranges in
  the latent: row i has height heights[i], column j radius radii[j].
  """
  def span(lo, hi):
    pad = margin * (hi - lo)
    return np.linspace(lo + pad, hi - pad, num)
  radii = span(*cylinders.RADIUS_RANGE)
  heights = span(*cylinders.HEIGHT_RANGE)
  rr, hh = np.meshgrid(radii, heights)
  z = probe.inverse(np.stack([rr.ravel(), hh.ravel()], 1)).reshape(num, num, -1)
  return radii, heights, z
