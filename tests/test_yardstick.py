"""Tests of the sample yardstick against exact, independently computed values."""

import numpy as np
import pytest
from scipy import stats

from genmodels.density import yardstick
from genmodels.data import world_map

pytest.importorskip("global_land_mask.globe")

N = 200_000
ALPHA = yardstick.DEFAULT_SMOOTHING


def _uniform_box(rng, n):
  return np.stack([rng.uniform(-180.0, 180.0, n),
                   90.0 - rng.uniform(0.0, 180.0, n)], axis=-1)


def _probs_from_land_fraction_grid(resolution):
  """P from world_map.land_fraction_grid (not from yardstick's own counts)."""
  if resolution <= 1:
    frac = world_map.land_fraction_grid(int(round(1 / resolution))).astype(np.float64)
  else:  # Equal-area 1 degree cells summed into blocks.
    k = int(resolution)
    frac = world_map.land_fraction_grid(1).astype(np.float64)
    frac = frac.reshape(180 // k, k, 360 // k, k).sum(axis=(1, 3))
  return frac / frac.sum()


@pytest.fixture(scope="module")
def data_samples():
  return world_map.sample_land(np.random.default_rng(123), N)


@pytest.mark.parametrize("resolution", [4.0, 1.0, 0.25])
def test_data_probs_are_exact(resolution):
  probs = yardstick.data_probs(resolution)
  assert probs.shape == (round(180 / resolution), round(360 / resolution))
  assert probs.sum() == pytest.approx(1.0, abs=1e-12)
  assert probs.min() >= 0
  np.testing.assert_allclose(probs, _probs_from_land_fraction_grid(resolution),
                             rtol=1e-5, atol=1e-12)
  # Everything north of 84N or in the middle of the Pacific is ocean.
  assert probs[0].sum() == 0.0


def test_bad_resolutions_and_keys():
  for bad in (7.0, 0.001, 0.0, -1.0, float("nan"), 1 / 7):
    with pytest.raises(ValueError):
      yardstick.data_probs(bad)
  assert [yardstick.resolution_key(r) for r in (4.0, 1, 0.25, 0.5)] == [
      "4deg", "1deg", "0p25deg", "0p5deg"]
  with pytest.raises(ValueError):
    yardstick.binned_kl(np.zeros((0, 2)), 4.0)
  with pytest.raises(ValueError):
    yardstick.binned_kl(np.zeros((5, 3)), 4.0)


def test_data_samples_score_at_the_floor(data_samples):
  scores = yardstick.score_samples(data_samples, resolutions=(4.0, 1.0))
  assert scores["land_precision"] == 1.0
  assert scores["land_recall_4deg"] > 0.999
  for r in (4.0, 1.0):
    floor = yardstick.yardstick_floor(N, r, seed=1, repeats=3)
    kl = scores[f"binned_kl_{yardstick.resolution_key(r)}"]
    assert kl == yardstick.binned_kl(data_samples, r)
    assert kl >= 0
    assert floor.std > 0
    assert abs(kl - floor.mean) < 5 * floor.std + 1e-3, (r, kl, floor)
    # For a perfect sampler the add-1/2 floor is mostly log(1 + alpha K / N).
    norm_term = np.log1p(ALPHA * np.prod(yardstick.grid_shape(r)) / N)
    assert floor.mean == pytest.approx(norm_term, rel=0.2)
  assert scores["binned_kl_4deg"] < 0.015
  # Repeats are deterministic and cached.
  assert yardstick.yardstick_floor(N, 4.0, seed=1, repeats=3) == yardstick.yardstick_floor(
      N, 4.0, seed=1, repeats=3)


def test_uniform_box_sampler_matches_closed_form():
  rng = np.random.default_rng(5)
  box_area, land = world_map.BOX_AREA, world_map.land_area()
  for r in (4.0, 1.0):
    probs = _probs_from_land_fraction_grid(r)
    p = probs[probs > 0]
    closed = float(np.sum(p * np.log(p * probs.size)))  # Q = 1/K everywhere.
    kls = [yardstick.binned_kl(_uniform_box(rng, N), r) for _ in range(3)]
    norm_term = np.log1p(ALPHA * probs.size / N)
    # Uniform counts are large in every cell: what is left is the known term.
    assert np.mean(kls) - closed == pytest.approx(norm_term, abs=0.01), (r, kls, closed)
    assert closed < np.log(box_area / land)
  # At fine cells the closed form approaches log(box area / land area).
  probs = yardstick.data_probs(0.25)
  p = probs[probs > 0]
  closed = float(np.sum(p * np.log(p * probs.size)))
  assert 0 < np.log(box_area / land) - closed < 0.05


def test_samples_off_the_map_lower_q_everywhere(data_samples):
  pts = data_samples[:50_000]
  nowhere = np.array([[np.nan, 0.0], [0.0, np.inf], [200.0, 0.0], [0.0, -95.0]] * 250)
  both = np.concatenate([pts, nowhere])
  k = np.prod(yardstick.grid_shape(4.0))
  expected = np.log((len(both) + ALPHA * k) / (len(pts) + ALPHA * k))
  assert yardstick.binned_kl(both, 4.0) - yardstick.binned_kl(pts, 4.0) == pytest.approx(
      expected, rel=1e-9)
  assert yardstick.land_precision(both) == pytest.approx(len(pts) / len(both))
  assert yardstick.land_recall(both, 4.0) == yardstick.land_recall(pts, 4.0)
  # On the box's closed edges points still count (lon = 180, lat = -90).
  edge = np.array([[180.0, -90.0], [-180.0, 90.0]])
  assert yardstick.sample_counts(edge, 4.0).sum() == 2
  # alpha = 0: the raw histogram, infinite once a cell with data mass is empty.
  assert yardstick.binned_kl(pts[:100], 1.0, smoothing=0.0) == np.inf
  assert np.isfinite(yardstick.binned_kl(pts[:100], 1.0, smoothing=0.5))


class _DiagonalGaussian:
  mean = np.array([10.0, 10.0])
  std = np.array([90.0, 50.0])

  def log_prob(self, x):
    return stats.norm.logpdf(x, self.mean, self.std).sum(axis=-1)

  def sample(self, rng, n):
    return rng.normal(self.mean, self.std, size=(n, 2))

  def cell_probs(self, resolution):
    """Exact mass per cell from the normal CDF, north row first."""
    lon_edges = np.linspace(-180, 180, round(360 / resolution) + 1)
    lat_edges = np.linspace(90, -90, round(180 / resolution) + 1)
    m_lon = np.diff(stats.norm.cdf(lon_edges, self.mean[0], self.std[0]))
    m_lat = -np.diff(stats.norm.cdf(lat_edges, self.mean[1], self.std[1]))
    return np.outer(m_lat, m_lon)


def test_exact_binned_kl_matches_cdf_and_samples():
  model = _DiagonalGaussian()
  r = 4.0
  probs = yardstick.data_probs(r)
  q = model.cell_probs(r)
  s = probs > 0
  closed = float(np.sum(probs[s] * np.log(probs[s] / q[s])))
  exact = yardstick.exact_binned_kl(model.log_prob, r)
  assert exact == pytest.approx(closed, abs=1e-6)
  # Coarser rules converge to it; the midpoint rule is close but not exact.
  assert yardstick.exact_binned_kl(model.log_prob, r, 2) == pytest.approx(closed, abs=1e-4)
  assert yardstick.exact_binned_kl(model.log_prob, r, 1) != pytest.approx(closed, abs=1e-6)
  q_box = q / q.sum()  # Conditioned on the box.
  renormalised = float(np.sum(probs[s] * np.log(probs[s] / q_box[s])))
  assert yardstick.exact_binned_kl(model.log_prob, r, renormalise=True) == pytest.approx(
      renormalised, abs=1e-6)
  assert renormalised < exact - 0.02  # About 6% of the Gaussian is off the box.

  # The samples' KL agrees with the exact one up to the floor, within noise.
  rng = np.random.default_rng(11)
  kls = np.array([yardstick.binned_kl(model.sample(rng, N), r) for _ in range(5)])
  floor = yardstick.yardstick_floor(N, r, seed=1, repeats=3)
  noise = kls.std(ddof=1) / np.sqrt(len(kls)) + floor.std
  assert abs(kls.mean() - floor.mean - exact) < 4 * noise + 1e-3, (kls, exact, floor)
  assert exact > 1.0  # Not a trivial agreement: the model is far from the data.

  with pytest.raises(ValueError):
    yardstick.exact_binned_kl(lambda x: np.zeros((len(x), 2)), r)


def test_recall_drops_with_a_missing_continent(data_samples):
  r = 4.0
  masses = yardstick.region_mass(r)
  assert set(masses) == set(yardstick.REGIONS)
  assert 0.99 < sum(masses.values()) <= 1.0 + 1e-12
  # Australia's box is cell-aligned: its mass is its share of the mask's land.
  ocean = world_map.ocean_mask()
  lon_lo, lon_hi, lat_lo, lat_hi = dict(
      (n, b) for n, b in yardstick.REGION_BOXES if n == "Australia")["Australia"]
  cpd = world_map.CELLS_PER_DEGREE
  block = ocean[int((90 - lat_hi) * cpd):int((90 - lat_lo) * cpd),
                int((lon_lo + 180) * cpd):int((lon_hi + 180) * cpd)]
  direct = (block.size - np.count_nonzero(block)) / world_map.num_land_cells()
  assert masses["Australia"] == pytest.approx(direct, rel=1e-12)
  assert 0.02 < masses["Australia"] < 0.05
  assert 0.2 < masses["Antarctica"] < 0.35

  full = yardstick.recall_by_region(data_samples, r)
  assert all(v > 0.999 for v in full.values()), full
  lon, lat = data_samples[:, 0], data_samples[:, 1]
  in_australia = (lon >= lon_lo) & (lon < lon_hi) & (lat >= lat_lo) & (lat < lat_hi)
  assert in_australia.sum() > 0.02 * N
  collapsed = data_samples[~in_australia]
  partial = yardstick.recall_by_region(collapsed, r)
  assert partial["Australia"] == 0.0
  for name in yardstick.REGIONS:
    if name != "Australia":
      assert partial[name] == full[name]
  drop = yardstick.land_recall(data_samples, r) - yardstick.land_recall(collapsed, r)
  assert drop == pytest.approx(masses["Australia"] * full["Australia"], rel=1e-9)
  assert drop == pytest.approx(masses["Australia"], abs=1e-4)
  # And the binned KL sees it: missing 3% of the mass costs far above the floor.
  assert yardstick.binned_kl(collapsed, r) > 0.05
  scores = yardstick.score_samples(collapsed)
  assert scores["recall_australia_4deg"] == 0.0
  assert scores["recall_eurasia_4deg"] == full["Eurasia"]


def test_score_samples_columns_agree_with_the_functions():
  rng = np.random.default_rng(3)
  pts = np.concatenate([_uniform_box(rng, 20_000), [[np.nan, np.nan]]])
  scores = yardstick.score_samples(pts)
  expected_keys = {"num_samples", "land_precision"}
  for key in ("4deg", "1deg", "0p25deg"):
    expected_keys |= {f"binned_kl_{key}", f"land_recall_{key}"}
  expected_keys |= {f"recall_{n.lower().replace(' ', '_')}_4deg" for n in yardstick.REGIONS}
  assert set(scores) == expected_keys
  assert scores["num_samples"] == len(pts)
  assert scores["land_precision"] == pytest.approx(world_map.on_land(pts).mean(), abs=0)
  assert 0.25 < scores["land_precision"] < 0.4
  for r in (4.0, 1.0, 0.25):
    key = yardstick.resolution_key(r)
    assert scores[f"binned_kl_{key}"] == pytest.approx(yardstick.binned_kl(pts, r), rel=1e-12)
    assert scores[f"land_recall_{key}"] == pytest.approx(yardstick.land_recall(pts, r),
                                                         rel=1e-12)
  # Coarser cells are easier to reach.
  assert scores["land_recall_4deg"] > scores["land_recall_1deg"] > scores["land_recall_0p25deg"]
  no_regions = yardstick.score_samples(pts, resolutions=(2.0,), region_resolution=None)
  assert set(no_regions) == {"num_samples", "land_precision", "binned_kl_2deg",
                             "land_recall_2deg"}


def test_histogram_log_density_is_the_normalised_histogram():
  """Each sample's cell gets count / (N cell area); the density sums to the
  share of samples on the map, and empty cells are -inf."""
  rng = np.random.default_rng(3)
  samples = np.concatenate([rng.uniform([-180, -90], [180, 90], (3000, 2)),
                            [[500.0, 0.0]]])  # one off the map
  log_density = yardstick.histogram_log_density(samples, 4.0)
  centres = np.stack(np.meshgrid(np.arange(-178, 180, 4.0), np.arange(88, -90, -4.0)),
                     -1).reshape(-1, 2)
  dens = np.exp(log_density(centres))
  assert np.sum(dens * 16.0) == pytest.approx(3000 / 3001, rel=1e-9)
  counts = yardstick.sample_counts(samples, 4.0).reshape(-1)
  np.testing.assert_allclose(dens, counts / (3001 * 16.0), rtol=1e-12)
  assert np.isneginf(log_density(centres[counts == 0])).all() or (counts > 0).all()
