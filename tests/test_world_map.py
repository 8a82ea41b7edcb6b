"""Tests of the world-map data against global_land_mask's own mask and lookup."""

import numpy as np
import pytest
from scipy import stats

from genmodels.data import world_map

globe = pytest.importorskip("global_land_mask.globe")
CPD = 120  # mask cells per degree


@pytest.fixture(scope="module")
def ocean():
  """globe._mask (True over ocean), loaded once per process (about 3 s)."""
  return globe._mask  # pylint: disable=protected-access


@pytest.fixture(scope="module")
def data():
  return world_map.load(num_train=2000, num_validation=500, num_test=2000)


def test_on_land_agrees_with_globe_is_land(ocean):
  del ocean
  rng = np.random.default_rng(0)
  lon = rng.uniform(-180.0, 180.0, 100_000)
  lat = rng.uniform(-89.99, 89.99, 100_000)
  ours = world_map.on_land(np.stack([lon, lat], -1))
  theirs = globe.is_land(lat, lon)
  assert 0.2 < ours.mean() < 0.45  # Both land and ocean are exercised.
  np.testing.assert_array_equal(ours, theirs)


def test_on_land_off_the_map_and_bad_shapes():
  pts = np.array([[181.0, 0.0], [0.0, 90.5], [-180.5, 10.0], [np.nan, 45.0],
                  [20.0, 10.0]])  # The last one is in the Sahara.
  np.testing.assert_array_equal(world_map.on_land(pts), [False] * 4 + [True])
  lp = world_map.true_log_prob(pts)
  assert np.all(np.isneginf(lp[:4]))
  assert lp[4] == pytest.approx(-np.log(world_map.land_area()))
  with pytest.raises(ValueError):
    world_map.on_land(np.zeros((4, 3)))
  with pytest.raises(ValueError):
    world_map.on_land(np.float64(1.0))


def test_entropy_from_independent_cell_count(ocean):
  num_land = ocean.size - np.count_nonzero(ocean)
  expected = np.log(num_land / CPD**2)
  assert world_map.entropy() == pytest.approx(expected, rel=1e-12)
  assert world_map.land_area() == pytest.approx(num_land / CPD**2, rel=1e-12)
  assert world_map.entropy() == pytest.approx(9.976, abs=1e-3)


def test_samples_on_land_and_deterministic(data):
  for split in data:
    assert split.dtype == np.float32 and split.shape[1] == 2
    assert world_map.on_land(split).all()
  assert [len(s) for s in data] == [2000, 500, 2000]
  again = world_map.load(num_train=2000, num_validation=500, num_test=2000)
  for a, b in zip(data, again):
    np.testing.assert_array_equal(a, b)
  other = world_map.load(num_train=2000, num_validation=500, num_test=2000, seed=1)
  assert not np.array_equal(data.train, other.train)
  # Splits are distinct streams.
  assert not np.array_equal(data.train[:500], data.validation)


def test_validation_and_test_do_not_depend_on_num_train(data):
  small = world_map.load(num_train=300, num_validation=500, num_test=2000)
  np.testing.assert_array_equal(small.validation, data.validation)
  np.testing.assert_array_equal(small.test, data.test)
  assert len(small.train) == 300


def _land_fraction_of_region(ocean, lon_lo, lon_hi, lat_lo, lat_hi):
  """Fraction of all land cells inside a region with cell-aligned edges."""
  r0, r1 = int((90 - lat_hi) * CPD), int((90 - lat_lo) * CPD)
  c0, c1 = int((lon_lo + 180) * CPD), int((lon_hi + 180) * CPD)
  block = ocean[r0:r1, c0:c1]
  return (block.size - np.count_nonzero(block)) / (ocean.size - np.count_nonzero(ocean))


def test_sampler_is_uniform_over_land(ocean):
  """Counts in large regions match each region's share of land cells."""
  n = 30_000
  pts = world_map.sample_land(np.random.default_rng(7), n)
  assert pts.shape == (n, 2)
  regions = [  # lon_lo, lon_hi, lat_lo, lat_hi: a partition of the map.
      (-180, -30, 0, 90), (-180, -30, -90, 0), (-30, 60, 0, 90),
      (-30, 60, -90, 0), (60, 180, 0, 90), (60, 180, -90, 0)]
  observed, expected = [], []
  for lon_lo, lon_hi, lat_lo, lat_hi in regions:
    inside = ((pts[:, 0] >= lon_lo) & (pts[:, 0] < lon_hi) &
              (pts[:, 1] > lat_lo) & (pts[:, 1] <= lat_hi))
    observed.append(int(inside.sum()))
    expected.append(n * _land_fraction_of_region(ocean, lon_lo, lon_hi, lat_lo, lat_hi))
  assert sum(observed) == n
  assert sum(expected) == pytest.approx(n)
  chi2 = sum((o - e)**2 / e for o, e in zip(observed, expected))
  p_value = stats.chi2.sf(chi2, df=len(regions) - 1)
  assert p_value > 1e-3, (observed, expected)
  # The northern hemisphere holds about two thirds of the land.
  north = np.mean(pts[:, 1] > 0)
  assert north == pytest.approx(sum(expected[::2]) / n, abs=0.015)


@pytest.mark.parametrize("sizes", [(0, 10, 10), (10, 0, 10), (10, 10, -5)])
def test_bad_sizes_raise(sizes):
  with pytest.raises(ValueError):
    world_map.load(*sizes)


def test_land_fraction_grid_bad_resolution():
  with pytest.raises(ValueError):
    world_map.land_fraction_grid(7)
