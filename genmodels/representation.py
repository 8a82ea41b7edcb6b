"""What an autoencoder's 2-D latent learns about cylinders (chapter 1's example).

A picture of a cylinder has 1,024 pixels but only two degrees of freedom,
radius r and height h. ``fit_autoencoder`` trains ``models.autoencoder`` on
``data.cylinders`` with the shared loop; ``analyse`` then asks the latent:

* a *linear probe*: the affine map latent -> (r, h) by closed-form least
  squares on training latents, scored by R^2 on held-out pictures;
* the volume pi r^2 h computed from the probe's (r, h) (a quantity that is not
  linear in the latent, and that a linear probe for the volume misses);
* a walk across the latent, decoded: the probe's inverse maps a grid of
  (r, h) to latent points, so one direction of the grid makes the cylinders
  taller and the other wider;
* the same probe on the first two principal components, the linear baseline.

Why the latent ends up (nearly) linear in (r, h). A plain autoencoder's latent is
some invertible but curved warp of (r, h) (a fan: small cylinders all look
alike), and a linear probe from it reaches R^2 of only ~0.7-0.9 (0.92 / 0.70
with ``prior_weight=0``). Two choices straighten it, neither of which uses the
labels:

1. A prior on the latent, matched by sliced Wasserstein distance (Kolouri et
   al., 2018; ``sliced_wasserstein_uniform``): the uniform distribution on the
   square [-1, 1]^2. The data's r and h are independent and uniform, so a latent
   that is an affine, axis-aligned function of them is exactly uniform on a
   rectangle: the prior is met by that solution and not by the curved fan
   (it fixes the latent's scale too). It is also met by area-preserving warps
   and folds of the square, which is why the start matters:
2. A start without folds. From a random start, pressing the latent into a
   square can fold or twist it (two far-apart cylinders end up side by side;
   a linear probe then fails badly: seed 2 of the default config reaches
   R^2 0.97 / 0.70 from a random start, seed 0 0.99 / 0.99). The
   encoder therefore has a linear path from the pixels plus a non-linear
   correction that starts at zero, and the linear path starts at the images'
   first two principal components (what a linear autoencoder finds),
   rotated to the angle whose distribution is closest to the prior
   (``prior_matched_pca_init``): an untwisted map of (r, h) that already
   fills the square, which training then straightens (R^2 0.965-0.970 for
   the radius and 0.985 for the height over seeds 0-2).

The radius range starts at 0.1 of the picture (6 pixels wide): thinner
cylinders are a few blurred columns, and the latent crumples there.
"""

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import ml_collections
import numpy as np
import optax

from genmodels.data import cylinders
from genmodels.models import autoencoder as ae_lib
from genmodels.training import loop
from genmodels.training import metrics as metrics_lib


# Linear probes.

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
      raise ValueError(f"only a square probe can be inverted, got W of shape "
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
    raise ValueError(f"need z [N, D] and y [N, K], got {z.shape} and {y.shape}")
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


# The autoencoder's objective.

def sliced_wasserstein_uniform(z_BxD, rng, num_directions: int = 16):
  """Squared sliced 2-Wasserstein distance from the batch to uniform on [-1, 1]^D.

  Projects the batch and as many prior samples onto the D axes and
  ``num_directions`` random unit directions, sorts each projection and compares
  them in order (the 1-D optimal transport), averaged.
  """
  k_prior, k_dir = jax.random.split(rng)
  d = z_BxD.shape[-1]
  prior = jax.random.uniform(k_prior, z_BxD.shape, minval=-1.0, maxval=1.0)
  dirs = jax.random.normal(k_dir, (d, num_directions))
  dirs = dirs / jnp.linalg.norm(dirs, axis=0, keepdims=True)
  dirs = jnp.concatenate([jnp.eye(d), dirs], axis=1)
  proj_z = jnp.sort(z_BxD @ dirs, axis=0)
  proj_p = jnp.sort(prior @ dirs, axis=0)
  return jnp.mean(jnp.square(proj_z - proj_p))


def autoencoder_loss(model, prior_weight: float = 10.0, num_directions: int = 16):
  """Mean squared pixel error + prior_weight * sliced Wasserstein to the prior."""

  def loss_fn(variables, batch, rng, train):
    del train
    x = batch["image"]
    z = model.apply(variables, x, method="encode")
    recon = model.apply(variables, z, method="decode")
    mse = jnp.mean(jnp.square(recon - x))
    sw = sliced_wasserstein_uniform(z, rng, num_directions)
    loss = mse + prior_weight * sw
    return loss, ({"mse": mse, "sliced_wasserstein": sw}, {})

  return loss_fn


def autoencoder_eval(model):
  """Per-picture mean squared pixel error."""

  def eval_fn(variables, batch):
    recon = model.apply(variables, batch["image"])
    return {"mse": jnp.mean(jnp.square(recon - batch["image"]), axis=(1, 2, 3))}

  return eval_fn


def _sw_to_uniform_square(z, num_directions: int = 32, seed: int = 0) -> float:
  """Deterministic numpy version of the prior distance, for choosing the start."""
  rng = np.random.default_rng(seed)
  prior = rng.uniform(-1.0, 1.0, size=z.shape)
  angles = np.linspace(0.0, np.pi, num_directions, endpoint=False)
  dirs = np.stack([np.cos(angles), np.sin(angles)])
  return float(np.mean(np.square(np.sort(z @ dirs, 0) - np.sort(prior @ dirs, 0))))


def prior_matched_pca_init(variables: dict, images, degrees_step: float = 2.0
                           ) -> tuple[dict, float]:
  """Starts the encoder's linear path at the rotated PCA plane nearest the prior.

  The top two principal components, each scaled to the prior's standard
  deviation 1/sqrt(3), then the rotation (searched in ``degrees_step`` steps
  over 0-90 degrees, the square's symmetry) whose points are closest to the
  uniform square in sliced Wasserstein distance, re-standardised. Uses no
  labels. Returns (variables, angle in degrees).
  """
  variables = ae_lib.pca_init(variables, images, scale=1.0 / np.sqrt(3.0))
  lin = variables["params"]["encoder"]["linear"]
  kernel = np.asarray(lin["kernel"], np.float64)
  bias = np.asarray(lin["bias"], np.float64)
  if kernel.shape[1] != 2:
    raise ValueError("prior_matched_pca_init needs a 2-D latent")
  x = np.asarray(images, np.float64).reshape(len(images), -1)
  z = x @ kernel + bias

  def rotated(angle):
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    zr = z @ rot
    mean, std = zr.mean(0), zr.std(0) * np.sqrt(3.0)
    return rot, mean, std, (zr - mean) / std

  angles = np.deg2rad(np.arange(0.0, 90.0, degrees_step))
  dists = [_sw_to_uniform_square(rotated(a)[3]) for a in angles]
  best = angles[int(np.argmin(dists))]
  rot, mean, std, _ = rotated(best)
  new_kernel = kernel @ rot / std
  new_bias = (bias @ rot - mean) / std
  params = variables["params"]
  encoder = {**params["encoder"], "linear": {
      "kernel": jnp.asarray(new_kernel, jnp.float32),
      "bias": jnp.asarray(new_bias, jnp.float32)}}
  return ({**variables, "params": {**params, "encoder": encoder}},
          float(np.rad2deg(best)))


# Training.

def make_optimizer(cfg) -> optax.GradientTransformation:
  """Adam with linear warm-up and cosine decay."""
  steps = max(int(cfg.num_steps), 1)
  warmup = min(int(cfg.warmup_steps), steps // 2)
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, cfg.learning_rate, warmup, steps, end_value=cfg.learning_rate * 0.01)
  return optax.adam(schedule)


class TrainedAutoencoder:
  """A trained autoencoder: ``encode`` pictures, ``decode`` latent points."""

  def __init__(self, model: ae_lib.Autoencoder, variables: dict):
    self.model, self.variables = model, variables
    self._encode = jax.jit(lambda v, x: model.apply(v, x, method="encode"))
    self._decode = jax.jit(lambda v, z: model.apply(v, z, method="decode"))

  def _batched(self, fn, x, batch_size=1024):
    """fn over x in batches of one padded size (one compilation per function)."""
    out = []
    for i in range(0, len(x), batch_size):
      chunk = x[i:i + batch_size]
      pad = batch_size - len(chunk)
      if pad:
        chunk = np.concatenate([chunk, np.repeat(chunk[:1], pad, axis=0)])
      out.append(np.asarray(fn(self.variables, jnp.asarray(chunk)))[:batch_size - pad])
    return np.concatenate(out)

  def encode(self, images) -> np.ndarray:
    """[N, H, W, 1] pictures -> [N, latent_dim] latent points."""
    return self._batched(self._encode, np.asarray(images, np.float32))

  def decode(self, z) -> np.ndarray:
    """[N, latent_dim] latent points -> [N, H, W, 1] pictures."""
    return self._batched(self._decode, np.asarray(z, np.float32))


def make_autoencoder(cfg: ml_collections.ConfigDict, image_size: int):
  return ae_lib.Autoencoder(image_shape=(image_size, image_size, 1),
                            **cfg.model.to_dict())


def fit_autoencoder(cfg: ml_collections.ConfigDict, train: cylinders.Cylinders,
                    test: cylinders.Cylinders, workdir: str, seed: int = 0,
                    progress: bool = True):
  """Trains the autoencoder of ``cfg`` with the shared loop.

  Returns (TrainedAutoencoder, TrainResult, init_info).
  """
  model = make_autoencoder(cfg, train.image.shape[1])
  info: dict[str, Any] = {}
  pca_images = train.image[:int(cfg.pca_examples)]

  def init_fn(key):
    variables = jax.jit(model.init)(key, jnp.asarray(train.image[:2]))
    if cfg.pca_init:
      variables, info["init_rotation_degrees"] = prior_matched_pca_init(
          variables, pca_images)
    return variables

  loop_config = loop.LoopConfig(
      num_steps=int(cfg.num_steps), batch_size=int(cfg.batch_size), seed=seed,
      log_every=int(cfg.log_every), checkpoint_every=int(cfg.checkpoint_every),
      eval_batch_size=int(cfg.eval_batch_size),
      steps_per_dispatch=int(cfg.steps_per_dispatch), progress=progress)
  result = loop.train(
      init_fn=init_fn,
      loss_fn=autoencoder_loss(model, cfg.prior_weight, cfg.num_directions),
      tx=make_optimizer(cfg), train_data={"image": train.image},
      config=loop_config, workdir=os.path.join(workdir, "autoencoder"),
      eval_fn=autoencoder_eval(model), eval_data={"test": {"image": test.image}})
  return TrainedAutoencoder(model, result.state.variables), result, info


# What the latent learned.

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


def _monotone_fraction(values, axis):
  """Share of neighbouring pairs along ``axis`` that increase."""
  return float(np.mean(np.diff(values, axis=axis) > 0))


def analyse(trained: TrainedAutoencoder, train: cylinders.Cylinders,
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


def write_results(workdir: str, results: dict) -> str:
  path = os.path.join(workdir, "results.json")
  with open(path + ".tmp", "w") as f:
    json.dump(metrics_lib.to_python(results), f, indent=2)
  os.replace(path + ".tmp", path)
  return path


def run(config: ml_collections.ConfigDict, workdir: str, progress: bool = True,
        figures: bool = True) -> dict:
  """Renders the data, trains, analyses; writes results.json and figures/."""
  train, test = cylinders.load(config.num_train, config.num_test, config.seed,
                               config.image_size)
  trained, result, info = fit_autoencoder(config.autoencoder, train, test, workdir,
                                          seed=config.seed, progress=progress)
  results, arrays = analyse(trained, train, test, config.probe_examples,
                            config.walk_size)
  results.update(info)
  results["train_seconds"] = float(result.train_seconds)
  results["num_steps"] = int(config.autoencoder.num_steps)
  results["num_params"] = int(sum(np.size(p) for p in
                                  jax.tree.leaves(trained.variables["params"])))
  if figures:
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
  write_results(workdir, results)
  return results


def format_summary(results: dict) -> str:
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
