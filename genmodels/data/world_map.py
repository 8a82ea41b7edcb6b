"""Points sampled uniformly from the land masses of the world map.

The data of chapter 1's "generative hello world". The map is the GLOBE 1 km land
mask shipped inside the PyPI package ``global-land-mask``: a boolean grid of
21,600 x 43,200 cells, 1/120 degree on a side, in the equirectangular
(longitude, latitude) plane. ``globe._mask`` is True over *ocean*.

Points are drawn uniformly over the box [-180, 180) x (-90, 90] and kept when
their cell is land (rejection sampling). Every land cell is therefore hit with
the same probability and a point is uniform inside its cell, so the true data
density is *exactly*

    p_data(x) = 1 / A  on land,  0 elsewhere,

with A the land area in square degrees, and the data's differential entropy is
exactly log A (about 9.976 nats). Any model's expected NLL under p_data exceeds
log A by KL(p_data || p_model): the honest score of every model in the ladder.

Coordinates are (longitude, latitude) in degrees, shape [N, 2].
"""

import functools
from typing import NamedTuple

import numpy as np

from genmodels.errors import UsageError

CELLS_PER_DEGREE = 120
LON_RANGE = (-180.0, 180.0)
LAT_RANGE = (-90.0, 90.0)
BOX_AREA = (LON_RANGE[1] - LON_RANGE[0]) * (LAT_RANGE[1] - LAT_RANGE[0])

# Distinct streams so the validation and test sets do not change with num_train.
_SPLIT_STREAM = {"train": 0, "validation": 1, "test": 2}


class WorldMapData(NamedTuple):
  """Train / validation / test points in degrees, each [N, 2] float32."""
  train: np.ndarray
  validation: np.ndarray
  test: np.ndarray


@functools.cache
def ocean_mask() -> np.ndarray:
  """The GLOBE mask, bool [21600, 43200], True over ocean; row 0 is the north."""
  try:
    from global_land_mask import globe  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise UsageError(
        "the world-map data needs the land mask of the PyPI package "
        "'global-land-mask': pip install global-land-mask") from e
  mask = globe._mask  # pylint: disable=protected-access
  expected = (180 * CELLS_PER_DEGREE, 360 * CELLS_PER_DEGREE)
  if mask.shape != expected or mask.dtype != np.bool_:
    raise UsageError(
        f"global-land-mask's mask has shape {mask.shape} and dtype {mask.dtype}, "
        f"expected {expected} bool: reinstall global-land-mask")
  return mask


@functools.cache
def num_land_cells() -> int:
  mask = ocean_mask()
  return int(mask.size - np.count_nonzero(mask))


def land_area() -> float:
  """Land area in square degrees of the equirectangular plane (about 21,498)."""
  return num_land_cells() / CELLS_PER_DEGREE**2


def entropy() -> float:
  """Exact differential entropy of the data, log(land area), in nats (deg^2)."""
  return float(np.log(land_area()))


def _cell_index(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Row and column of the mask cell holding each (lon, lat) point."""
  points = np.asarray(points, dtype=np.float64)
  # NaN has no cell (and would cast to a garbage index); callers mask it out.
  points = np.where(np.isfinite(points), points, 0.0)
  n_rows, n_cols = 180 * CELLS_PER_DEGREE, 360 * CELLS_PER_DEGREE
  rows = np.floor((LAT_RANGE[1] - points[..., 1]) * CELLS_PER_DEGREE)
  cols = np.floor((points[..., 0] - LON_RANGE[0]) * CELLS_PER_DEGREE)
  return (np.clip(rows, 0, n_rows - 1).astype(np.int64),
          np.clip(cols, 0, n_cols - 1).astype(np.int64))


def in_box(points: np.ndarray) -> np.ndarray:
  points = np.asarray(points)
  return ((points[..., 0] >= LON_RANGE[0]) & (points[..., 0] <= LON_RANGE[1]) &
          (points[..., 1] >= LAT_RANGE[0]) & (points[..., 1] <= LAT_RANGE[1]))


def on_land(points: np.ndarray) -> np.ndarray:
  """True where a (lon, lat) point in degrees lies on land; False off the map."""
  points = np.asarray(points)
  if points.ndim < 1 or points.shape[-1] != 2:
    raise UsageError(f"points must have shape [..., 2] (lon, lat in degrees), "
                     f"got {points.shape}")
  rows, cols = _cell_index(points)
  return ~ocean_mask()[rows, cols] & in_box(points) & np.isfinite(points).all(-1)


def true_log_prob(points: np.ndarray) -> np.ndarray:
  """log p_data: -log(land area) on land, -inf elsewhere."""
  return np.where(on_land(points), -np.log(land_area()), -np.inf)


def sample_land(rng: np.random.Generator, n: int) -> np.ndarray:
  """n points uniform over land, float64 [n, 2], by rejection from the box."""
  out, have = [], 0
  while have < n:
    m = int(1.1 * (n - have) * BOX_AREA / land_area()) + 64
    lon = rng.uniform(*LON_RANGE, size=m)
    # Rows cover (90 - (i+1)/120, 90 - i/120]: sample latitude as 90 - U[0, 180).
    lat = LAT_RANGE[1] - rng.uniform(0.0, LAT_RANGE[1] - LAT_RANGE[0], size=m)
    pts = np.stack([lon, lat], axis=-1)
    pts = pts[on_land(pts)]
    out.append(pts)
    have += len(pts)
  return np.concatenate(out)[:n]


def load(num_train: int = 100_000, num_validation: int = 10_000,
         num_test: int = 100_000, seed: int = 0) -> WorldMapData:
  """Deterministic splits of land points: the same seed gives the same points.

  Each split has its own random stream, so validation and test points do not
  depend on ``num_train`` (the book's "few data points" setting, e.g.
  num_train=1000, is scored on the same test set as the full one).
  """
  for name, n in (("num_train", num_train), ("num_validation", num_validation),
                  ("num_test", num_test)):
    if int(n) <= 0:
      raise UsageError(f"{name} must be a positive number of points, got {n}")
  sizes = {"train": num_train, "validation": num_validation, "test": num_test}
  splits = {
      split: sample_land(np.random.default_rng([seed, _SPLIT_STREAM[split]]),
                         int(n)).astype(np.float32)
      for split, n in sizes.items()
  }
  return WorldMapData(**splits)


@functools.cache
def land_fraction_grid(cells_per_degree: int = 2) -> np.ndarray:
  """Fraction of land in coarse cells, float32 [180*c, 360*c], north first.

  For drawing coastlines and for the exact density of the data on a coarse grid.
  """
  if CELLS_PER_DEGREE % cells_per_degree:
    raise UsageError(f"cells_per_degree must divide {CELLS_PER_DEGREE}")
  f = CELLS_PER_DEGREE // cells_per_degree
  ocean = ocean_mask()
  rows = []
  for r in range(0, ocean.shape[0], f):  # Row blocks keep memory small.
    block = ocean[r:r + f].reshape(f, -1, f).sum(axis=(0, 2))
    rows.append(1.0 - block / f**2)
  return np.asarray(rows, dtype=np.float32)


# Continent boxes (lon_lo, lon_hi, lat_lo, lat_hi) in degrees, tested in this
# order; a cell belongs to the region of the first box holding its centre. Edges
# are multiples of 4 in longitude and 2 (mod 4) in latitude, so they follow cell
# edges exactly at 4, 2, 1, 0.5 and 0.25 degrees (the centre rule decides at
# other resolutions). They are coarse: New Guinea, Indonesia and Japan count as
# Eurasia; Iceland and Greenland as North America; Panama, Costa Rica and
# Nicaragua south of 14N as South America; the Levant and Sinai as Africa; New
# Zealand, the Pacific islands south of 14S and the southern ocean islands are
# in no region (0.2% of the mass). Antarctica holds 28% of the data's mass (the
# equirectangular plane stretches it), Eurasia 32%, North America 17%, Africa
# 12%, South America 7%, Australia 3%.
REGION_BOXES: tuple[tuple[str, tuple[float, float, float, float]], ...] = (
    ("Antarctica", (-180.0, 180.0, -90.0, -62.0)),
    ("Eurasia", (-180.0, -168.0, 62.0, 90.0)),  # Chukotka, west of 180.
    ("South America", (-92.0, -32.0, -58.0, 6.0)),
    ("South America", (-76.0, -32.0, 6.0, 14.0)),
    ("North America", (-180.0, -28.0, 6.0, 90.0)),
    ("North America", (-28.0, -12.0, 58.0, 90.0)),  # Iceland, east Greenland.
    ("Australia", (112.0, 156.0, -46.0, -10.0)),
    ("Africa", (-28.0, 12.0, -38.0, 38.0)),
    ("Africa", (12.0, 36.0, -38.0, 34.0)),
    ("Africa", (36.0, 52.0, -38.0, 14.0)),  # Horn of Africa, Madagascar.
    ("Eurasia", (-12.0, 180.0, -14.0, 90.0)),
)
REGIONS: tuple[str, ...] = ("Africa", "Eurasia", "North America",
                            "South America", "Australia", "Antarctica")
