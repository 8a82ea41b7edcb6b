"""A sample yardstick for the world map that any model gets, explicit or not.

The data of chapter 1 are uniform over land (``genmodels.data.world_map``), so
their distribution binned on a grid of the (lon, lat) box is known *exactly*:

    P_c = (land mask cells in cell c) / (land mask cells in total),

counted from the 1/120 degree GLOBE mask itself. A model is scored from N of its
samples alone, with no density needed, so GANs, VAEs and flows are scored alike:

* ``binned_kl``: KL(P || Q_hat), Q_hat the model's smoothed histogram over the
  same cells (add-alpha, see below);
* ``land_precision``: the share of samples that land on land;
* ``land_recall``: the share of the data's mass P in cells the samples reach;
* ``recall_by_region``: the same per continent box (shows mode collapse).

``exact_binned_kl`` gives the binned KL of an explicit model from its density
(by quadrature), the value the sample version estimates; ``yardstick_floor``
scores samples of the data itself, a perfect sampler, to give the floor (mean)
and noise (std) of the yardstick at a sample size N.

Cells. A resolution ``r`` (degrees) must divide 180 and be a whole number of
mask cells (``r * 120`` an integer), e.g. 4, 1, 0.5, 0.25. Cell (i, j) covers
lon in [-180 + j r, -180 + (j+1) r) and lat in (90 - (i+1) r, 90 - i r], north
first, exactly as the mask's own cells (row 0 is the north), so a point's cell
is the coarse cell of its mask cell and P is exact, not sampled.

Smoothing. Q_hat_c = (n_c + alpha) / (N + alpha K): ``alpha`` pseudo-counts
(default 1/2) in *every* one of the K cells of the box, land or ocean. Add-1/2
is the Jeffreys / Krichevsky-Trofimov estimator, the standard choice for log
loss, and it does not use the truth: the prior is the same for any model. For a
cell with many expected counts lam, E[log(n + 1/2)] = log lam + O(1/lam^2), so
the +1/2 cancels the 1/(2 lam) Jensen bias of the plug-in log; what is left for
a good model is mostly the known normalisation term log(1 + alpha K / N) and
the empty-cell penalty where N P_c is small (fine grids). Both make up the
floor that ``yardstick_floor`` measures: compare models with the floor at the
same N and resolution. alpha = 0 gives the raw histogram (inf when a cell with
P_c > 0 is empty).

Samples that fall nowhere. Samples outside the closed box [-180, 180] x
[-90, 90] and non-finite samples are in no cell but are still counted in N:
they lower Q_hat everywhere (Q_hat then sums to less than one, which only raises
the KL), count as off land for precision, and reach no cell for recall. This
matches ``exact_binned_kl``, which likewise leaves the model's mass outside the
box out of Q instead of renormalising (by default).
"""

import functools
import math
from typing import Callable, NamedTuple, Sequence

import numpy as np

from genmodels.errors import UsageError
from genmodels.data import world_map

CPD = world_map.CELLS_PER_DEGREE
_MASK_ROWS, _MASK_COLS = 180 * CPD, 360 * CPD

# The continents of the per-region recall (``world_map.REGION_BOXES``).
REGION_BOXES, REGIONS = world_map.REGION_BOXES, world_map.REGIONS

DEFAULT_SMOOTHING = 0.5
DEFAULT_RESOLUTIONS = (4.0, 1.0, 0.25)


def _cell_side(resolution_deg: float) -> int:
  """Mask cells per side of a coarse cell; raises for a bad resolution."""
  r = float(resolution_deg)
  side = round(r * CPD) if math.isfinite(r) else 0
  if side < 1 or abs(r * CPD - side) > 1e-9 or _MASK_ROWS % side:
    raise UsageError(
        f"resolution_deg must divide 180 and be a multiple of 1/{CPD} degree "
        f"(e.g. 4, 1, 0.5, 0.25), got {resolution_deg}")
  return side


def grid_shape(resolution_deg: float) -> tuple[int, int]:
  """(rows, cols) of the grid at a resolution: (180 / r, 360 / r)."""
  side = _cell_side(resolution_deg)
  return _MASK_ROWS // side, _MASK_COLS // side


def resolution_key(resolution_deg: float) -> str:
  """Column-name suffix of a resolution: 4 -> '4deg', 0.25 -> '0p25deg'."""
  _cell_side(resolution_deg)
  text = f"{float(resolution_deg):g}".replace(".", "p")
  return f"{text}deg"


@functools.cache
def _land_counts(side: int) -> np.ndarray:
  """Land mask cells per coarse cell, int64 [rows, cols], north first."""
  ocean = world_map.ocean_mask().view(np.uint8)  # 0 / 1 per mask cell
  n_rows, n_cols = _MASK_ROWS // side, _MASK_COLS // side
  counts = np.empty((n_rows, n_cols), dtype=np.int64)
  row_sum = np.uint8 if side < 256 else np.int32  # holds up to `side` ocean cells
  step = max(1, 4096 // side)  # Coarse rows per block: bounded memory.
  for r0 in range(0, n_rows, step):
    r1 = min(n_rows, r0 + step)
    block = ocean[r0 * side:r1 * side].reshape(r1 - r0, side, _MASK_COLS)
    # Ocean over each cell's rows first (whole contiguous rows added: fast),
    # then over its columns on the side-times smaller array.
    per_col = block.sum(axis=1, dtype=row_sum)  # [rows, mask cols]
    ocean_cells = per_col.reshape(r1 - r0, n_cols, side).sum(axis=2, dtype=np.int64)
    counts[r0:r1] = side * side - ocean_cells
  return counts


@functools.cache
def _data_probs_cached(side: int) -> np.ndarray:
  counts = _land_counts(side)
  probs = counts / counts.sum()
  probs.flags.writeable = False
  return probs


def data_probs(resolution_deg: float) -> np.ndarray:
  """The data's exact binned distribution P, float64 [rows, cols], sums to 1.

  Land mask cells in each cell over all land mask cells, north row first. The
  array is cached and read-only.
  """
  return _data_probs_cached(_cell_side(resolution_deg))


def _as_points(samples) -> np.ndarray:
  points = np.asarray(samples)
  if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
    raise UsageError("samples must have shape [N, 2] (lon, lat in degrees), N > 0, "
                     f"got {points.shape}")
  return points


def sample_counts(samples, resolution_deg: float) -> np.ndarray:
  """Histogram of samples over the grid, int64 [rows, cols] (see module doc).

  Samples off the closed box or non-finite are in no cell (the counts then sum
  to fewer than N).
  """
  points = _as_points(samples)
  side = _cell_side(resolution_deg)
  n_rows, n_cols = _MASK_ROWS // side, _MASK_COLS // side
  # The mask's own cell index, so that cells agree with on_land and P exactly.
  rows, cols = world_map._cell_index(points)  # pylint: disable=protected-access
  inside = world_map.in_box(points) & np.isfinite(points).all(axis=-1)
  flat = (rows[inside] // side) * n_cols + cols[inside] // side
  return np.bincount(flat, minlength=n_rows * n_cols).reshape(n_rows, n_cols)


def histogram_log_density(samples, resolution_deg: float = 1.0):
  """points [M, 2] -> log of the samples' histogram density (per degree², -inf
  where no sample fell): an implicit model's density map for figures."""
  n = len(_as_points(samples))
  side = _cell_side(resolution_deg)
  with np.errstate(divide="ignore"):
    log_dens = np.log(sample_counts(samples, resolution_deg) / (n * resolution_deg**2))

  def log_density(points):
    rows, cols = world_map._cell_index(np.asarray(points))  # pylint: disable=protected-access
    return log_dens[rows // side, cols // side]

  return log_density


def _kl_from_counts(probs: np.ndarray, counts: np.ndarray, n: int,
                    smoothing: float) -> float:
  alpha = float(smoothing)
  if not alpha >= 0.0:
    raise UsageError(f"smoothing must be >= 0, got {smoothing}")
  support = probs > 0
  p = probs[support]
  c = counts[support].astype(np.float64)
  with np.errstate(divide="ignore"):  # alpha = 0 and an empty cell: inf.
    log_q = np.log(c + alpha) - np.log(n + alpha * probs.size)
  return float(np.sum(p * (np.log(p) - log_q)))


def binned_kl(samples, resolution_deg: float,
              smoothing: float = DEFAULT_SMOOTHING) -> float:
  """KL(P || Q_hat) in nats from samples of a model: >= 0, no density needed.

  P is the data's exact binned distribution (``data_probs``). Q_hat is the
  samples' histogram with add-alpha smoothing over every cell of the box:
  Q_hat_c = (n_c + alpha) / (N + alpha K), alpha = ``smoothing`` (default 1/2,
  Jeffreys / Krichevsky-Trofimov), K = number of cells. N counts every sample,
  including those off the box or non-finite, which fall in no cell and so lower
  Q_hat everywhere. An estimate biased upwards by a floor that depends on N and
  the resolution (``yardstick_floor``), e.g. mostly log(1 + alpha K / N).
  """
  points = _as_points(samples)
  counts = sample_counts(points, resolution_deg)
  return _kl_from_counts(data_probs(resolution_deg), counts, len(points), smoothing)


def land_precision(samples) -> float:
  """Share of samples on land (off the map and non-finite count as not)."""
  return float(np.mean(world_map.on_land(_as_points(samples))))


def land_recall(samples, resolution_deg: float) -> float:
  """Share of the data's mass P in cells that at least one sample reaches."""
  counts = sample_counts(samples, resolution_deg)
  probs = data_probs(resolution_deg)
  return float(np.sum(probs[counts > 0]))


@functools.cache
def _region_ids(side: int) -> np.ndarray:
  """Region index (into REGIONS) of each cell by its centre, -1 for none."""
  n_rows, n_cols = _MASK_ROWS // side, _MASK_COLS // side
  res = side / CPD
  lon = world_map.LON_RANGE[0] + (np.arange(n_cols) + 0.5) * res
  lat = world_map.LAT_RANGE[1] - (np.arange(n_rows) + 0.5) * res
  lon, lat = np.meshgrid(lon, lat)
  ids = np.full((n_rows, n_cols), -1, dtype=np.int8)
  for name, (lon_lo, lon_hi, lat_lo, lat_hi) in reversed(REGION_BOXES):
    inside = (lon >= lon_lo) & (lon < lon_hi) & (lat >= lat_lo) & (lat < lat_hi)
    ids[inside] = REGIONS.index(name)  # Reversed: the first box wins.
  ids.flags.writeable = False
  return ids


def region_ids(resolution_deg: float) -> np.ndarray:
  """Index into REGIONS of every cell at a resolution, -1 outside all regions."""
  return _region_ids(_cell_side(resolution_deg))


def region_mass(resolution_deg: float) -> dict[str, float]:
  """Each region's share of the data's mass P at a resolution."""
  probs, ids = data_probs(resolution_deg), region_ids(resolution_deg)
  return {name: float(probs[ids == k].sum()) for k, name in enumerate(REGIONS)}


def recall_by_region(samples, resolution_deg: float) -> dict[str, float]:
  """Per region of REGIONS: share of its data mass in cells the samples reach.

  1 for a sampler that covers the region at this resolution, near 0 for a model
  whose samples never go there (mode collapse).
  """
  counts = sample_counts(samples, resolution_deg)
  probs, ids = data_probs(resolution_deg), region_ids(resolution_deg)
  reached = counts > 0
  out = {}
  for k, name in enumerate(REGIONS):
    in_region = ids == k
    out[name] = float(probs[in_region & reached].sum() / probs[in_region].sum())
  return out


def _model_log_cell_probs(log_prob_fn, side: int, cells: np.ndarray,
                          points_per_cell_side: int, batch_size: int) -> np.ndarray:
  """log of the model's mass in the given flat cells, by Gauss-Legendre."""
  n_cols = _MASK_COLS // side
  res = side / CPD
  nodes, weights = np.polynomial.legendre.leggauss(points_per_cell_side)
  offsets = (nodes + 1.0) / 2.0  # In [0, 1] along a cell side.
  du, dv = np.meshgrid(offsets, offsets, indexing="ij")
  du, dv = du.ravel(), dv.ravel()  # lon and lat offsets, [k^2].
  # Weights on [0, 1]^2 sum to one; times the cell area in square degrees.
  log_w = (np.log(np.outer(weights, weights).ravel() / 4.0) + 2.0 * np.log(res))
  k2 = len(du)
  out = np.empty(len(cells), dtype=np.float64)
  cells_per_batch = max(1, batch_size // k2)
  for b0 in range(0, len(cells), cells_per_batch):
    chunk = cells[b0:b0 + cells_per_batch]
    row, col = np.divmod(chunk, n_cols)
    lon = world_map.LON_RANGE[0] + (col[:, None] + du[None, :]) * res
    lat = world_map.LAT_RANGE[1] - (row[:, None] + dv[None, :]) * res
    pts = np.stack([lon, lat], axis=-1).reshape(-1, 2)
    log_q = np.asarray(log_prob_fn(pts), dtype=np.float64)
    if log_q.shape != (len(pts),):
      raise UsageError("log_prob_fn must map points [M, 2] to log densities [M], "
                       f"got shape {log_q.shape} for {len(pts)} points")
    log_q = log_q.reshape(len(chunk), k2)
    terms = log_q + log_w[None, :]
    top = np.max(terms, axis=1, keepdims=True)
    safe_top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
      out[b0:b0 + len(chunk)] = (
          np.log(np.sum(np.exp(terms - safe_top), axis=1)) + safe_top[:, 0])
  return out


def exact_binned_kl(log_prob_fn: Callable[[np.ndarray], np.ndarray],
                    resolution_deg: float, points_per_cell_side: int = 4,
                    renormalise: bool = False, batch_size: int = 1 << 20) -> float:
  """KL(P || Q) with Q the explicit model's mass in each cell, by quadrature.

  The value ``binned_kl`` estimates from samples (up to its floor).

  Args:
    log_prob_fn: maps points [M, 2] (lon, lat in degrees, float64) to the
      model's log density per square degree, [M] (numpy or jax arrays).
    resolution_deg: cell side in degrees (divides 180, multiple of 1/120).
    points_per_cell_side: Q_c = integral of the density over cell c by the
      tensor-product Gauss-Legendre rule with this many nodes per side (exact
      for polynomials of degree 2k-1 in each coordinate), summed in log space.
    renormalise: False (default): the model's mass outside the box is left out
      of Q, like samples off the box in ``binned_kl`` (Q sums to its mass in
      the box; only cells with P > 0 are evaluated). True: Q is divided by its
      total over the box (every cell is evaluated), the KL of the model
      conditioned on the box.
    batch_size: points per call of log_prob_fn.
  """
  side = _cell_side(resolution_deg)
  k = int(points_per_cell_side)
  if k < 1:
    raise UsageError(f"points_per_cell_side must be >= 1, got {points_per_cell_side}")
  probs = data_probs(resolution_deg).ravel()
  cells = np.arange(probs.size) if renormalise else np.flatnonzero(probs > 0)
  log_q = _model_log_cell_probs(log_prob_fn, side, cells, k, int(batch_size))
  if renormalise:
    top = np.max(log_q)
    log_q = log_q - (top + np.log(np.sum(np.exp(log_q - top))))
  p = probs[cells]
  support = p > 0
  p, log_q = p[support], log_q[support]
  return float(np.sum(p * (np.log(p) - log_q)))


def score_samples(samples, resolutions: Sequence[float] = DEFAULT_RESOLUTIONS,
                  smoothing: float = DEFAULT_SMOOTHING,
                  region_resolution: float | None = 4.0) -> dict[str, float]:
  """Flat yardstick columns for N samples of a model.

  ``binned_kl_<r>`` and ``land_recall_<r>`` for every resolution (keys from
  ``resolution_key``: 4 -> '4deg', 0.25 -> '0p25deg'), ``land_precision``,
  ``num_samples``, and, unless ``region_resolution`` is None,
  ``recall_<region>_<r>`` per region (e.g. ``recall_australia_4deg``).
  """
  points = _as_points(samples)
  n = len(points)
  rows, cols = world_map._cell_index(points)  # pylint: disable=protected-access
  finite = np.isfinite(points).all(axis=-1)
  inside = world_map.in_box(points) & finite
  rows, cols = rows[inside], cols[inside]
  out: dict[str, float] = {"num_samples": float(n)}
  on_land = ~world_map.ocean_mask()[rows, cols]
  out["land_precision"] = float(np.count_nonzero(on_land) / n)
  wanted = list(resolutions)
  if region_resolution is not None and region_resolution not in wanted:
    wanted.append(region_resolution)
  for r in wanted:
    side = _cell_side(r)
    n_rows, n_cols = _MASK_ROWS // side, _MASK_COLS // side
    counts = np.bincount((rows // side) * n_cols + cols // side,
                         minlength=n_rows * n_cols).reshape(n_rows, n_cols)
    probs, key = data_probs(r), resolution_key(r)
    if r in resolutions:
      out[f"binned_kl_{key}"] = _kl_from_counts(probs, counts, n, smoothing)
      out[f"land_recall_{key}"] = float(np.sum(probs[counts > 0]))
    if r == region_resolution:
      ids, reached = region_ids(r), counts > 0
      for k, name in enumerate(REGIONS):
        in_region = ids == k
        col = f"recall_{name.lower().replace(' ', '_')}_{key}"
        out[col] = float(probs[in_region & reached].sum() / probs[in_region].sum())
  return out


class Floor(NamedTuple):
  """The yardstick on samples of the data itself: floor (mean) and noise (std)."""
  mean: float
  std: float
  values: tuple[float, ...]


@functools.cache
def yardstick_floor(n: int, resolution: float, seed: int = 0, repeats: int = 5,
                    smoothing: float = DEFAULT_SMOOTHING) -> Floor:
  """binned_kl of ``repeats`` sets of n exact data samples (a perfect sampler).

  Mean: the floor the yardstick reaches for a perfect model at this N and
  resolution; std (ddof=1): its sampling noise. Deterministic in ``seed``;
  cached.
  """
  if int(n) <= 0 or int(repeats) < 2:
    raise UsageError(f"need n >= 1 and repeats >= 2, got n={n}, repeats={repeats}")
  values = []
  for k in range(int(repeats)):
    pts = world_map.sample_land(np.random.default_rng([seed, k, 0xF100]), int(n))
    values.append(binned_kl(pts, resolution, smoothing))
  return Floor(float(np.mean(values)), float(np.std(values, ddof=1)), tuple(values))
