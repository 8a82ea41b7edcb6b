"""Figures a researcher wants to look at, written as PNG files (Agg backend)."""

import os
from typing import Callable, Sequence

import matplotlib

matplotlib.use("Agg")
from matplotlib import colors  # pylint: disable=g-import-not-at-top
from matplotlib import patheffects  # pylint: disable=g-import-not-at-top
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from genmodels.data import world_map

_EXTENT = (*world_map.LON_RANGE, *world_map.LAT_RANGE)


def _save(fig, path):
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)
  return path


# A thin light line inside a dark halo reads on any background: on magma's black
# (empty ocean) the light core shows, on its pale yellow (a uniform box model)
# the dark halo does.
_HALO = [patheffects.Stroke(linewidth=1.6, foreground="black", alpha=0.8),
         patheffects.Normal()]


def _coastline(ax, cells_per_degree: int = 2):
  land = world_map.land_fraction_grid(cells_per_degree)
  lon = np.linspace(*world_map.LON_RANGE, land.shape[1])
  lat = np.linspace(world_map.LAT_RANGE[1], world_map.LAT_RANGE[0], land.shape[0])
  cs = ax.contour(lon, lat, land, levels=[0.5], colors="white", linewidths=0.5)
  cs.set_path_effects(_HALO)
  return cs


def _equator(ax):
  """The equator as a dashed line, labelled at the map's left edge."""
  ax.axhline(0, color="lightgrey", lw=0.6, ls=(0, (4, 3)), path_effects=_HALO)
  ax.text(world_map.LON_RANGE[0] + 2, 1.5, "equator", fontsize=7,
          color="white", ha="left", va="bottom",
          path_effects=[patheffects.withStroke(linewidth=1.5, foreground="black")])


def density_grid(log_prob_fn: Callable[[np.ndarray], np.ndarray],
                 cells_per_degree: int = 2) -> np.ndarray:
  """exp(log_prob_fn) at the cell centres of the map, [180*c, 360*c], north first."""
  c = cells_per_degree
  lon = np.linspace(-180, 180, 360 * c, endpoint=False) + 0.5 / c
  lat = np.linspace(90, -90, 180 * c, endpoint=False) - 0.5 / c
  grid = np.stack(np.meshgrid(lon, lat), -1).reshape(-1, 2).astype(np.float32)
  log_p = np.asarray(log_prob_fn(grid), dtype=np.float64)
  return np.exp(log_p).reshape(len(lat), len(lon))


def clip_value(dens: np.ndarray, percentile: float | None = 99.0) -> float:
  """Top of the colour scale: the ``percentile`` of the finite grid values.

  None (or 100) gives the finite maximum. Falls back to 1.0 when no value is
  finite and positive, so a broken model still yields a (blank) figure.
  """
  finite = np.asarray(dens, dtype=np.float64)
  finite = finite[np.isfinite(finite)]
  if finite.size == 0:
    return 1.0
  top = float(finite.max() if percentile is None else
              np.percentile(finite, percentile))
  return top if top > 0 else (float(finite.max()) if finite.max() > 0 else 1.0)


def _pct(p: float) -> str:
  p = float(p)
  n = f"{p:g}"
  if not p.is_integer():
    return f"{n}th"
  i = int(p)
  suffix = "th" if 10 <= i % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(i % 10, "th")
  return f"{n}{suffix}"


def density_panel(ax, dens: np.ndarray, clip_percentile: float | None = 99.0,
                  log_scale: bool = False, coastline: bool = True):
  """Draw a density grid (``density_grid``'s layout) on ax; (image, colour-bar label, extend)."""
  finite = dens[np.isfinite(dens)]
  vmax = clip_value(dens, clip_percentile)
  clipped = finite.size > 0 and bool(finite.max() > vmax)
  cmap = plt.get_cmap("magma").with_extremes(bad="tab:cyan")
  if log_scale:
    # Four decades below the top: leakage into the ocean at 1e-4 of the land
    # density is visible, anything smaller is floored to black.
    norm = colors.LogNorm(vmin=vmax * 1e-4, vmax=vmax, clip=False)
    floor = vmax * 1e-4
    shown = np.where(np.isfinite(dens), np.maximum(dens, floor), np.nan)
    below = finite.size > 0 and bool(finite.min() < floor)
    extend = {(True, True): "both", (True, False): "max",
              (False, True): "min", (False, False): "neither"}[(clipped, below)]
  else:
    norm = colors.Normalize(vmin=0.0, vmax=vmax)
    shown = dens
    extend = "max" if clipped else "neither"
  im = ax.imshow(shown, extent=_EXTENT, origin="upper", cmap=cmap, norm=norm,
                 aspect="auto", interpolation="nearest")
  if coastline:
    _coastline(ax)
  label = "density (deg⁻², log scale)" if log_scale else "density (deg⁻²)"
  if clipped:  # Only possible with a percentile: None clips at the maximum.
    label += f", clipped at {_pct(clip_percentile)} pct"
  if finite.size < dens.size:
    label += f"\n{dens.size - finite.size:,} non-finite cells in cyan"
  return im, label, extend


def density_figure(log_prob_fn: Callable[[np.ndarray], np.ndarray] | None,
                   title: str = "", cells_per_degree: int = 2,
                   clip_percentile: float | None = 99.0,
                   log_scale: bool = False, grid: np.ndarray | None = None):
  """The figure of ``density_map``, not yet saved (for tests and notebooks).

  ``grid`` (a ``density_grid`` already computed) replaces ``log_prob_fn``.
  """
  dens = density_grid(log_prob_fn, cells_per_degree) if grid is None else grid
  fig, ax = plt.subplots(figsize=(9, 4.5))
  im, label, extend = density_panel(ax, dens, clip_percentile, log_scale)
  _equator(ax)
  fig.colorbar(im, ax=ax, label=label, extend=extend)
  ax.set(xlabel="longitude", ylabel="latitude", title=title)
  return fig


def taxonomy_figure(branches: Sequence[tuple[str, Sequence[tuple[str, np.ndarray,
                                                                  np.ndarray]]]],
                    title: str = "", max_points: int = 3000, per_row: int = 2):
  """Chapter 1's taxonomy on the map: one block of panels per branch.

  ``branches``: [(branch title, [(model title, density grid, samples [M, 2])])].
  Each model gets two panels, its density (or sample histogram) and its first
  ``max_points`` samples over the coastline; ``per_row`` models per row.
  """
  heights = [-(-len(models) // per_row) for _, models in branches]
  fig = plt.figure(figsize=(6.4 * per_row, 1.9 * sum(heights) + 0.5 * len(heights) + 0.6),
                   layout="constrained")
  subfigs = fig.subfigures(len(branches), 1, height_ratios=[h + 0.3 for h in heights],
                           squeeze=False)[:, 0]
  for subfig, (branch, models), n_rows in zip(subfigs, branches, heights):
    subfig.suptitle(branch, fontweight="bold", x=0.01, ha="left")
    axes = subfig.subplots(n_rows, 2 * per_row, squeeze=False)
    for ax in axes.flat:
      ax.set_axis_off()
    for k, (name, dens, samples) in enumerate(models):
      ax_d, ax_s = axes[k // per_row, 2 * (k % per_row):2 * (k % per_row) + 2]
      density_panel(ax_d, dens, 99.0)
      pts = np.asarray(samples)[:max_points]
      ax_s.scatter(pts[:, 0], pts[:, 1], s=0.2, alpha=0.6, color="tab:blue",
                   rasterized=True)
      _coastline(ax_s)
      ax_s.set(xlim=world_map.LON_RANGE, ylim=world_map.LAT_RANGE)
      ax_d.set_title(name, fontsize=8, loc="left")
      ax_s.set_title(f"{len(pts):,} samples", fontsize=8, loc="left")
  if title:
    fig.suptitle(title)
  return fig


def taxonomy_map(branches, path: str, title: str = ""):
  """``taxonomy_figure`` saved to ``path`` (PNG)."""
  return _save(taxonomy_figure(branches, title=title), path)


def density_map(log_prob_fn: Callable[[np.ndarray], np.ndarray], path: str,
                title: str = "", cells_per_degree: int = 2,
                clip_percentile: float | None = 99.0, log_scale: bool = False,
                grid: np.ndarray | None = None):
  """The model's density over the map as a heat map, with the coastline.

  The colour scale is linear in density and runs from 0 to the
  ``clip_percentile`` of the density over the grid (cells above it saturate,
  the colour bar gets an arrow and its label says so). Linear by default
  because the question the figure answers is "where does the probability
  mass go", and the truth is a flat plateau of 1/A on land: a linear scale
  shows a model's bumps and dips against that plateau as they weigh in the
  NLL, while a log scale flattens them and spends most of its range on the
  ocean's near-zero values. Without the clip, a few hot spots (a flow's
  spikes) set the top of the scale and the rest of the land is one colour.
  ``log_scale=True`` instead shows four decades below the clip value, for
  looking at leakage into the ocean. ``clip_percentile=None`` disables
  clipping. Non-finite densities are drawn in cyan and counted in the label.
  """
  return _save(density_figure(log_prob_fn, title, cells_per_degree,
                              clip_percentile, log_scale, grid), path)


def count_off_map(points: np.ndarray) -> int:
  """How many (lon, lat) points fall outside the plotted box or are non-finite."""
  points = np.asarray(points)
  shown = world_map.in_box(points) & np.isfinite(points).all(-1)
  return int(np.count_nonzero(~shown))


def _panel_title(name: str, shown: int, total: int, off_map: int) -> str:
  count = f"{shown:,} {name}" if shown == total else f"{shown:,} of {total:,} {name}"
  if off_map:
    return f"{count} ({off_map:,} off the map, not shown)"
  return f"{count} (all on the map)"


def samples_vs_data_figure(samples: np.ndarray, data: np.ndarray,
                           title: str = "", max_points: int = 5000):
  """The figure of ``samples_vs_data``, not yet saved (for tests and notebooks)."""
  fig, axes = plt.subplots(1, 2, figsize=(12, 3.6), sharey=True)
  for ax, pts, name in ((axes[0], data, "data points"),
                        (axes[1], samples, "model samples")):
    pts = np.asarray(pts)
    total = len(pts)
    pts = pts[:max_points]
    ax.scatter(pts[:, 0], pts[:, 1], s=0.5, alpha=0.5,
               color="tab:orange" if name.startswith("data") else "tab:blue")
    ax.set(xlim=world_map.LON_RANGE, ylim=world_map.LAT_RANGE, xlabel="longitude",
           title=_panel_title(name, len(pts), total, count_off_map(pts)))
  axes[0].set_ylabel("latitude")
  fig.suptitle(title)
  return fig


def samples_vs_data(samples: np.ndarray, data: np.ndarray, path: str,
                    title: str = "", max_points: int = 5000):
  """Model samples beside training data, on the same axes.

  Each panel plots the first ``max_points`` points; its title gives how many
  of those fall outside the map box or are non-finite (and so are not drawn).
  """
  return _save(samples_vs_data_figure(samples, data, title, max_points), path)


def training_curves(history: Sequence[dict], path: str, keys: Sequence[str],
                    title: str = "", hline: float | None = None,
                    hline_label: str = ""):
  """Metric ``keys`` over steps, one line per (split, key) found in the history."""
  fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.4), squeeze=False)
  for ax, key in zip(axes[0], keys):
    splits = sorted({r["split"] for r in history if key in r})
    for split in splits:
      pts = [(r["step"], float(r[key])) for r in history
             if r["split"] == split and key in r]
      pts = [(s, v) for s, v in pts if np.isfinite(v)]
      if pts:
        steps, vals = zip(*pts)
        ax.plot(steps, vals, marker="." if len(pts) < 30 else None, label=split)
    if hline is not None:
      ax.axhline(hline, color="k", ls="--", lw=0.8, label=hline_label)
    ax.set(xlabel="step", ylabel=key)
    ax.legend()
  fig.suptitle(title)
  return _save(fig, path)


def confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], path: str,
                     title: str = "confusion matrix"):
  fig, ax = plt.subplots(figsize=(6.5, 5.5))
  im = ax.imshow(matrix, cmap="Blues")
  n = len(class_names)
  ax.set_xticks(range(n), class_names, rotation=60, ha="right")
  ax.set_yticks(range(n), class_names)
  for i in range(n):
    for j in range(n):
      ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=6,
              color="white" if matrix[i, j] > matrix.max() / 2 else "black")
  ax.set(xlabel="predicted", ylabel="true", title=title)
  fig.colorbar(im, ax=ax)
  return _save(fig, path)


def prediction_grid(images: np.ndarray, true: np.ndarray, pred: np.ndarray,
                    class_names: Sequence[str], path: str, cols: int = 10):
  """Test images with predicted and true labels, as the book shows them."""
  n = len(images)
  rows = -(-n // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.7 * rows), squeeze=False)
  for i, ax in enumerate(axes.flat):
    ax.axis("off")
    if i >= n:
      continue
    img = images[i]
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray")
    ok = true[i] == pred[i]
    ax.set_title(f"pred: {class_names[pred[i]]}\ntrue: {class_names[true[i]]}",
                 fontsize=6, color="green" if ok else "red")
  return _save(fig, path)
