"""Behaviour of the density-ladder figures: colour clip, off-map counts, files."""

import matplotlib.pyplot as plt
import numpy as np
import pytest

from genmodels import plotting
from genmodels.data import world_map


@pytest.fixture(autouse=True)
def _close_figures():
  yield
  plt.close("all")


def _spiky_log_prob(x):
  """A flat density plus one hot spot, so the maximum is far above the 99th pct."""
  x = np.asarray(x, np.float64)
  spike = np.exp(-((x[:, 0] - 20) ** 2 + (x[:, 1] - 10) ** 2) / 2.0)
  return np.log(1e-5 + 0.05 * spike)


def _colour_scale(fig):
  ax = fig.axes[0]
  return ax.images[0], fig.axes[1].get_ylabel()


def test_clip_value_is_percentile_of_finite_grid_values():
  rng = np.random.default_rng(0)
  dens = rng.exponential(size=(30, 60))
  expected = np.percentile(dens, 99)
  assert plotting.clip_value(dens, 99) == pytest.approx(expected)
  assert plotting.clip_value(dens, 99) < dens.max()
  dens[0, :5] = [np.nan, np.inf, -np.inf, np.nan, np.inf]
  finite = dens[np.isfinite(dens)]
  assert plotting.clip_value(dens, 95) == pytest.approx(np.percentile(finite, 95))
  assert plotting.clip_value(dens, None) == pytest.approx(finite.max())
  assert plotting.clip_value(np.full((3, 3), np.nan)) == 1.0


def test_density_figure_clips_colour_scale_and_says_so():
  fig = plotting.density_figure(_spiky_log_prob, cells_per_degree=1)
  image, label = _colour_scale(fig)
  dens = plotting.density_grid(_spiky_log_prob, cells_per_degree=1)
  assert dens.shape == (180, 360)
  assert image.norm.vmax == pytest.approx(np.percentile(dens, 99))
  assert image.norm.vmax < dens.max() / 10  # The hot spot no longer sets the scale.
  assert image.norm.vmin == 0.0
  assert "clipped at 99th pct" in label
  assert fig.axes[1].get_label() == "<colorbar>"
  # Equator is labelled and the coastline has a halo (visible on pale boxes).
  ax = fig.axes[0]
  assert "equator" in [t.get_text() for t in ax.texts]
  coast = [c for c in ax.collections if c.get_path_effects()]
  assert coast, "coastline has no path effects (halo)"


def test_density_figure_flat_density_is_not_called_clipped():
  const = lambda x: np.full(len(x), -np.log(world_map.BOX_AREA))
  fig = plotting.density_figure(const, cells_per_degree=1)
  image, label = _colour_scale(fig)
  assert image.norm.vmax == pytest.approx(1 / world_map.BOX_AREA, rel=1e-6)
  assert "clipped" not in label
  fig_none = plotting.density_figure(_spiky_log_prob, cells_per_degree=1,
                                     clip_percentile=None)
  image, label = _colour_scale(fig_none)
  dens = plotting.density_grid(_spiky_log_prob, cells_per_degree=1)
  assert image.norm.vmax == pytest.approx(dens.max())
  assert "clipped" not in label


def test_density_figure_log_scale_and_nonfinite_cells():
  def log_prob(x):
    lp = _spiky_log_prob(x)
    lp[:7] = np.nan
    return lp
  fig = plotting.density_figure(log_prob, cells_per_degree=1, log_scale=True)
  image, label = _colour_scale(fig)
  finite = plotting.density_grid(log_prob, cells_per_degree=1)
  finite = finite[np.isfinite(finite)]
  assert type(image.norm).__name__ == "LogNorm"
  assert image.norm.vmax == pytest.approx(np.percentile(finite, 99))
  assert "log scale" in label and "7 non-finite cells" in label


def test_density_map_writes_png(tmp_path):
  path = plotting.density_map(_spiky_log_prob, str(tmp_path / "sub" / "d.png"),
                              title="t", cells_per_degree=1)
  with open(path, "rb") as f:
    head = f.read(8)
  assert head == b"\x89PNG\r\n\x1a\n"
  assert (tmp_path / "sub" / "d.png").stat().st_size > 10_000


def test_count_off_map_matches_independent_count():
  rng = np.random.default_rng(1)
  pts = rng.normal(0, [120, 60], size=(4000, 2))
  pts[:3] = [[np.nan, 0], [0, np.inf], [180.0, -90.0]]  # The last one is on the map.
  expected = np.sum(~((np.abs(pts[:, 0]) <= 180) & (np.abs(pts[:, 1]) <= 90)))
  assert 0 < expected < len(pts)
  assert plotting.count_off_map(pts) == expected
  assert plotting.count_off_map(np.zeros((5, 2))) == 0


def test_samples_vs_data_titles_count_off_map_points(tmp_path):
  rng = np.random.default_rng(2)
  data = rng.uniform([-180, -90], [180, 90], size=(300, 2))
  samples = rng.normal(0, [120, 60], size=(500, 2))
  samples[:4] = np.nan
  off = plotting.count_off_map(samples)
  fig = plotting.samples_vs_data_figure(samples, data, max_points=400)
  titles = [ax.get_title() for ax in fig.axes]
  assert titles[0] == "300 data points (all on the map)"
  off_shown = plotting.count_off_map(samples[:400])
  assert 4 <= off_shown <= off
  assert titles[1] == f"400 of 500 model samples ({off_shown} off the map, not shown)"
  path = plotting.samples_vs_data(samples, data, str(tmp_path / "s.png"))
  assert (tmp_path / "s.png").stat().st_size > 5_000 and path.endswith("s.png")


def test_taxonomy_figure_groups_models_by_branch():
  grid = np.ones((180, 360))
  pts = np.zeros((10, 2))
  branches = [("tractable density", [("a", grid, pts), ("b", grid, pts), ("c", grid, pts)]),
              ("implicit density", [("d", grid, pts)])]
  fig = plotting.taxonomy_figure(branches, title="t", per_row=2)
  subfigs = fig.subfigs
  assert [s._suptitle.get_text() for s in subfigs] == ["tractable density", "implicit density"]
  shown = [[t for ax in s.axes if (t := ax.get_title(loc="left"))] for s in subfigs]
  assert shown == [["a", "10 samples", "b", "10 samples", "c", "10 samples"],
                   ["d", "10 samples"]]
  plt.close(fig)
