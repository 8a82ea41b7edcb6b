"""The latent-space experiment's report: probes, the volume, a walk, figures.

``analyse`` asks the trained latent what it knows (see ``task``'s docstring for
why it ends up nearly linear in radius and height); ``row`` is results.json.
"""

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from genmodels.data import cylinders
from genmodels.latent.probes import (factors, fit_linear_probe, r2_score,
                                     volume_from_latent, walk_grid)
from genmodels.networks import autoencoder as ae_lib
from genmodels.training import experiment
from genmodels.training import preemption


def _monotone_fraction(values, axis):
  """Share of neighbouring pairs along ``axis`` that increase."""
  return float(np.mean(np.diff(values, axis=axis) > 0))


def analyse(trained, train: cylinders.Cylinders,
            test: cylinders.Cylinders, probe_examples: int = 5000,
            walk_size: int = 7) -> tuple[dict, dict]:
  """The numbers of results.json, and arrays the figures need."""
  n = min(probe_examples, len(train.image))
  z_train = trained.encode(train.image[:n])
  z_test = trained.encode(test.image)
  y_train, y_test = factors(train)[:n], factors(test)
  probe = fit_linear_probe(z_train, y_train)
  pred = probe(z_test)
  r2 = r2_score(y_test, pred)

  v_true = cylinders.volume(test.radius, test.height)
  v_pred = volume_from_latent(probe, z_test)
  rel_err = np.abs(v_pred - v_true) / v_true
  v_linear = fit_linear_probe(z_train, cylinders.volume(train.radius[:n],
                                                        train.height[:n]))(z_test)

  # The linear baseline: the same probe on the first two principal components.
  mean, directions, _ = ae_lib.principal_components(train.image[:n], 2)
  pcs = lambda x: (x.reshape(len(x), -1).astype(np.float64) - mean) @ directions.T
  pca_probe = fit_linear_probe(pcs(train.image[:n]), y_train)
  pca_r2 = r2_score(y_test, pca_probe(pcs(test.image)))

  recon = trained.decode(z_test)
  radii, heights, z_walk = walk_grid(probe, walk_size)
  walk_images = trained.decode(z_walk.reshape(-1, z_walk.shape[-1]))
  width, height = cylinders.measure(walk_images)
  width = width.reshape(walk_size, walk_size)
  height = height.reshape(walk_size, walk_size)

  results = {
      "probe_r2_radius": float(r2[0]),
      "probe_r2_height": float(r2[1]),
      "probe_rmse_radius": float(np.sqrt(np.mean(np.square(pred[:, 0] - y_test[:, 0])))),
      "probe_rmse_height": float(np.sqrt(np.mean(np.square(pred[:, 1] - y_test[:, 1])))),
      "volume_r2": float(r2_score(v_true, v_pred)),
      "volume_median_relative_error": float(np.median(rel_err)),
      "volume_linear_probe_r2": float(r2_score(v_true, v_linear)),
      "pca_probe_r2_radius": float(pca_r2[0]),
      "pca_probe_r2_height": float(pca_r2[1]),
      "reconstruction_mse": float(np.mean(np.square(recon - test.image))),
      # Along a row of the walk the radius grows, down a column the height.
      "walk_width_increasing_along_radius": _monotone_fraction(width, axis=1),
      "walk_height_increasing_along_height": _monotone_fraction(height, axis=0),
      "probe_weight": probe.weight.tolist(),
      "probe_bias": probe.bias.tolist(),
      "num_probe_examples": int(n),
      "num_test_examples": int(len(test.image)),
  }
  arrays = {"z_test": z_test, "y_test": y_test, "pred": pred, "v_true": v_true,
            "v_pred": v_pred, "recon": recon, "walk_images": walk_images,
            "radii": radii, "heights": heights}
  return results, arrays


def row(config, trained, result, train, test, info, workdir, options) -> dict:
  """Analyses the latent; writes the figures; returns results.json."""
  results, arrays = analyse(trained, train, test, config.probe_examples,
                            config.walk_size)
  preemption.stop_if_requested("analysing the latent", local=True)  # before figures
  results.update(info)
  results["train_seconds"] = float(result.train_seconds)
  results["num_steps"] = int(config.autoencoder.train.num_steps)
  results["num_params"] = experiment.num_params(trained.variables["params"])
  if options.figures:
    fig_dir = os.path.join(workdir, "figures")
    paths = [
        latent_walk(arrays["walk_images"], arrays["radii"], arrays["heights"],
                    f"{fig_dir}/latent_walk.png"),
        latent_scatter(arrays["z_test"], arrays["y_test"],
                       f"{fig_dir}/latent_scatter.png"),
        probe_fit(arrays["y_test"], arrays["pred"], arrays["v_true"],
                  arrays["v_pred"], results, f"{fig_dir}/probe.png"),
        reconstructions(test.image[:10], arrays["recon"][:10],
                        f"{fig_dir}/reconstructions.png"),
    ]
    results["figures"] = [os.path.relpath(p, workdir) for p in paths]
  return results


summarize = experiment.only_row


def table(results: dict) -> str:
  r = results
  return "\n".join([
      f"linear probe latent -> (r, h), held-out R^2: radius {r['probe_r2_radius']:.4f}, "
      f"height {r['probe_r2_height']:.4f}",
      f"  (same probe on the first 2 principal components: "
      f"{r['pca_probe_r2_radius']:.4f}, {r['pca_probe_r2_height']:.4f})",
      f"volume pi r^2 h from the latent: R^2 {r['volume_r2']:.4f}, median relative "
      f"error {100 * r['volume_median_relative_error']:.1f}% "
      f"(a linear probe for the volume itself: R^2 {r['volume_linear_probe_r2']:.4f})",
      f"reconstruction MSE {r['reconstruction_mse']:.5f}; "
      f"training {r['train_seconds']:.1f} s",
  ])


# Figures.

def _save(fig, path):
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)
  return path


def latent_walk(images, radii, heights, path):
  """Decoded walk: wider to the right, taller upwards."""
  num_h, num_r = len(heights), len(radii)
  images = np.asarray(images).reshape(num_h, num_r, *np.shape(images)[1:])
  fig, axes = plt.subplots(num_h, num_r, figsize=(1.1 * num_r + 0.6, 1.1 * num_h + 0.6),
                           squeeze=False)
  for i in range(num_h):
    for j in range(num_r):
      ax = axes[num_h - 1 - i, j]  # Tallest at the top.
      ax.imshow(images[i, j, ..., 0], cmap="gray", vmin=0, vmax=1)
      ax.set_xticks([])
      ax.set_yticks([])
      if i == 0:
        ax.set_xlabel(f"r={radii[j]:.2f}", fontsize=7)
      if j == 0:
        ax.set_ylabel(f"h={heights[i]:.2f}", fontsize=7)
  fig.suptitle("decoded walk across the latent (probe's inverse): "
               "wider to the right, taller upwards", fontsize=9)
  return _save(fig, path)


def latent_scatter(z, y, path):
  """Held-out latent points coloured by radius and by height."""
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), layout="constrained")
  for ax, k, name in ((axes[0], 0, "radius"), (axes[1], 1, "height")):
    sc = ax.scatter(z[:, 0], z[:, 1], c=y[:, k], s=4, cmap="viridis")
    fig.colorbar(sc, ax=ax, label=name)
    ax.set(xlabel="z1", ylabel="z2", title=f"latent coloured by {name}")
    ax.set_aspect("equal")
  return _save(fig, path)


def probe_fit(y, pred, v_true, v_pred, results, path):
  """Predicted against true radius, height and volume on held-out pictures."""
  fig, axes = plt.subplots(1, 3, figsize=(13, 4))
  items = ((y[:, 0], pred[:, 0], "radius", results["probe_r2_radius"]),
           (y[:, 1], pred[:, 1], "height", results["probe_r2_height"]),
           (v_true, v_pred, "volume π r²h", results["volume_r2"]))
  for ax, (t, p, name, r2) in zip(axes, items):
    ax.scatter(t, p, s=3, alpha=0.5)
    lo, hi = float(np.min(t)), float(np.max(t))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set(xlabel=f"true {name}", ylabel="from the latent (linear probe)",
           title=f"{name}: held-out R² {r2:.3f}")
  return _save(fig, path)


def reconstructions(images, recon, path):
  """Held-out pictures (top) and their reconstructions through the 2-D latent."""
  n = len(images)
  fig, axes = plt.subplots(2, n, figsize=(1.1 * n, 2.4), squeeze=False)
  for j in range(n):
    for i, im in enumerate((images[j], recon[j])):
      axes[i, j].imshow(im[..., 0], cmap="gray", vmin=0, vmax=1)
      axes[i, j].axis("off")
  fig.suptitle("held-out pictures (top) and reconstructions (bottom)", fontsize=9)
  return _save(fig, path)
