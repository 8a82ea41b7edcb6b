"""Figures a researcher wants to look at, written as PNG files (Agg backend)."""

import os
from typing import Callable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from genmodels.data import world_map

_EXTENT = (*world_map.LON_RANGE, *world_map.LAT_RANGE)


def _save(fig, path):
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)
  return path


def _coastline(ax):
  land = world_map.land_fraction_grid(2)
  lon = np.linspace(*world_map.LON_RANGE, land.shape[1])
  lat = np.linspace(world_map.LAT_RANGE[1], world_map.LAT_RANGE[0], land.shape[0])
  ax.contour(lon, lat, land, levels=[0.5], colors="white", linewidths=0.4)


def density_map(log_prob_fn: Callable[[np.ndarray], np.ndarray], path: str,
                title: str = "", cells_per_degree: int = 2):
  """The model's density over the map as a heat map, with the coastline."""
  lon = np.linspace(-180, 180, 360 * cells_per_degree, endpoint=False) + 0.5 / cells_per_degree
  lat = np.linspace(90, -90, 180 * cells_per_degree, endpoint=False) - 0.5 / cells_per_degree
  grid = np.stack(np.meshgrid(lon, lat), -1).reshape(-1, 2).astype(np.float32)
  dens = np.exp(np.asarray(log_prob_fn(grid))).reshape(len(lat), len(lon))
  fig, ax = plt.subplots(figsize=(9, 4.5))
  im = ax.imshow(dens, extent=_EXTENT, origin="upper", cmap="magma", aspect="auto")
  _coastline(ax)
  fig.colorbar(im, ax=ax, label="density (1/deg²)")
  ax.axhline(0, color="grey", lw=0.2)
  ax.set(xlabel="longitude", ylabel="latitude", title=title)
  return _save(fig, path)


def samples_vs_data(samples: np.ndarray, data: np.ndarray, path: str,
                    title: str = "", max_points: int = 5000):
  """Model samples beside training data, on the same axes."""
  fig, axes = plt.subplots(1, 2, figsize=(12, 3.6), sharey=True)
  for ax, pts, name in ((axes[0], data, "data"), (axes[1], samples, "model samples")):
    pts = pts[:max_points]
    ax.scatter(pts[:, 0], pts[:, 1], s=0.5, alpha=0.5,
               color="tab:orange" if name == "data" else "tab:blue")
    ax.set(xlim=world_map.LON_RANGE, ylim=world_map.LAT_RANGE, xlabel="longitude",
           title=f"{name} ({len(pts):,} points)")
  axes[0].set_ylabel("latitude")
  fig.suptitle(title)
  return _save(fig, path)


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
