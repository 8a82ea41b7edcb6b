"""The image experiment's figures: what a researcher looks at.

* ``NAME_samples.png``: a grid of a model's samples;
* ``NAME_neighbours.png``: a few samples beside their nearest training images
  in pixel space (a memorisation check: a copy shows as a twin);
* ``NAME_training.png``: bits/dim per step (train batches, held-out splits);
* ``bpd_vs_time.png``: held-out bits/dim against training seconds, every model;
* for a VAE, ``NAME_latent.png`` (test images' posterior means coloured by
  class) and, with a 2-D latent, ``NAME_decoded.png`` (the expected image on a
  grid of latent points): the book's chapter-3 figures.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from genmodels.images import cards
from genmodels.images import yardstick


def _pyplot():
  """matplotlib's pyplot on the Agg backend, imported when a figure is drawn
  (it takes seconds, and a run with --figures=false never needs it)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _save(fig, path: str) -> str:
  plt = _pyplot()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)
  return path


def image_grid(images: np.ndarray, num_levels: int, path: str, title: str = "",
               cols: int = 8, vmax: float | None = None) -> str:
  """Images [N, H, W, 1] as a grid, level 0 black and K-1 (or ``vmax``) white."""
  plt = _pyplot()
  n = len(images)
  rows = -(-n // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(1.1 * cols, 1.1 * rows + 0.4),
                           squeeze=False)
  for i, ax in enumerate(axes.flat):
    ax.axis("off")
    if i < n:
      ax.imshow(images[i, ..., 0], cmap="gray", vmin=0,
                vmax=num_levels - 1 if vmax is None else vmax, interpolation="nearest")
  if title:
    fig.suptitle(title, fontsize=9)
  return _save(fig, path)


def neighbours(samples: np.ndarray, train: np.ndarray, num_levels: int, path: str,
               title: str, num: int = 8, k: int = 3) -> str:
  """Row i: sample i, then its k nearest training images (L2 over levels)."""
  idx, dist = yardstick.nearest_neighbours(samples[:num], train, k)
  plt = _pyplot()
  fig, axes = plt.subplots(num, k + 1, figsize=(1.1 * (k + 1), 1.1 * num + 0.4),
                           squeeze=False)
  for i in range(min(num, len(samples))):
    row = [samples[i]] + [train[j] for j in idx[i]]
    for c, (ax, im) in enumerate(zip(axes[i], row)):
      ax.imshow(im[..., 0], cmap="gray", vmin=0, vmax=num_levels - 1,
                interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      if c:
        ax.set_xlabel(f"d={dist[i, c - 1]:.0f}", fontsize=6, labelpad=1)
  axes[0, 0].set_title("sample", fontsize=7)
  for c in range(1, k + 1):
    axes[0, c].set_title(f"train #{c}", fontsize=7)
  fig.suptitle(title, fontsize=9)
  return _save(fig, path)


def bits_per_dim_curve(history: list[dict], num_dims: int, path: str, title: str) -> str:
  """Train-batch and held-out bits/dim against the step."""
  plt = _pyplot()
  to_bpd = 1.0 / (num_dims * np.log(2))
  fig, ax = plt.subplots(figsize=(5, 3.2))
  train = [r for r in history if r["split"] == "train" and "nll" in r]
  if train:
    ax.plot([r["step"] for r in train], [r["nll"] * to_bpd for r in train],
            label="train (batch)")
  for split in ("validation", "test"):
    evals = [r for r in history if r["split"] == split and "nll" in r]
    if evals:
      ax.plot([r["step"] for r in evals], [r["nll"] * to_bpd for r in evals], "o-",
              label=split)
  ax.set(xlabel="step", ylabel="bits / dim", title=title)
  ax.legend()
  return _save(fig, path)


def bits_per_dim_vs_time(histories: dict[str, list[dict]], num_dims: int, path: str,
                         bounds: dict[str, bool]) -> str:
  """Validation bits/dim against training seconds, one line per model (dashed:
  a bound)."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6, 3.8))
  for name, history in histories.items():
    evals = [r for r in history if r["split"] == "validation" and "nll" in r
             and "train_seconds" in r]
    if not evals:
      continue
    ax.plot([max(r["train_seconds"], 0.1) for r in evals],
            [r["nll"] / (num_dims * np.log(2)) for r in evals],
            "o--" if bounds.get(name) else "o-", label=cards.card(name).display)
  ax.set(xscale="log", xlabel="training seconds (evaluations excluded)",
         ylabel="validation bits / dim",
         title="bits/dim against wall time (dashed: an upper bound)")
  ax.legend(fontsize=7)
  return _save(fig, path)


def vae_latent(model, params, data, path_latent: str, path_decoded: str | None,
               title: str, num_points: int = 5000, grid: int = 12) -> list[str]:
  """The test images' posterior means (first 2 latent dims) coloured by class
  and, for a 2-D latent, the decoded expected image on a grid of z."""
  plt = _pyplot()
  x = data.test[:num_points]
  encode = jax.jit(lambda p, b: model.apply({"params": p}, b, method="encode"))
  z = np.concatenate([np.asarray(encode(params, x[i:i + 1000]))
                      for i in range(0, len(x), 1000)])
  fig, ax = plt.subplots(figsize=(5, 4.4))
  labels = data.test_labels[:len(x)] if data.test_labels is not None else None
  sc = ax.scatter(z[:, 0], z[:, 1] if z.shape[1] > 1 else np.zeros(len(z)), s=2,
                  c=labels, cmap="tab10", alpha=0.6)
  if labels is not None:
    fig.colorbar(sc, ax=ax, label="class")
  ax.set(xlabel="z1", ylabel="z2", title=title)
  paths = [_save(fig, path_latent)]
  if path_decoded and z.shape[1] == 2:
    lo, hi = np.percentile(z, [2, 98], axis=0)
    g1, g2 = np.linspace(lo[0], hi[0], grid), np.linspace(hi[1], lo[1], grid)
    zz = np.stack(np.meshgrid(g1, g2), -1).reshape(-1, 2).astype(np.float32)
    decode = jax.jit(lambda p, b: model.apply({"params": p}, b, method="decode_mean"))
    images = np.asarray(decode(params, zz))
    paths.append(image_grid(images, data.num_levels, path_decoded, cols=grid,
                            title=f"{title}: decoded expected images on a z grid"))
  return paths
