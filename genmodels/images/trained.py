"""Trained image models: score and sample integer images, saved and loaded.

Each model of an image workdir lives in ``workdir/models/NAME/`` with its
``model.json`` (name, module fields, the image shape and levels) and final
``params`` (Orbax), as the density experiment's models do
(``genmodels.density.trained``); ``genmodels.load_density`` gives it back.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from genmodels.density import trained as density_trained
from genmodels.errors import UsageError
from genmodels.images import cards
from genmodels.images import report
from genmodels.models import base


class TrainedImageModel:
  """A trained model over integer images [N, H, W, C] in {0..num_levels-1}.

  ``log_prob`` is the exact log-probability mass, or (``is_bound``) a lower
  bound on it, as ``likelihood`` says; ``sample`` gives uint8 images of the
  training data's shape. At most ``MAX_SAMPLES`` images per call: an
  allocation that fails inside XLA aborts the process (a notebook with it).
  """
  MAX_SAMPLES = 100_000
  BATCH = 500

  def __init__(self, name: str, model, params, image_shape: tuple[int, int, int]):
    self.name, self.model, self.params = name, model, params
    self.image_shape = tuple(int(d) for d in image_shape)
    self.num_levels = int(model.num_levels)
    self.is_bound = bool(model.log_prob_is_bound)
    self.likelihood = report.likelihood_label(model)
    self._log_prob = jax.jit(lambda p, x: model.apply({"params": p}, x, method="log_prob"))
    self._sample = jax.jit(lambda p, k, n: model.apply({"params": p}, k, n, method="sample"),
                           static_argnums=2)

  def _check_images(self, x) -> tuple[np.ndarray, bool]:
    x = np.asarray(x)
    shape, want = tuple(x.shape), self.image_shape
    single = shape == want
    x = x[None] if single else x
    if tuple(x.shape[1:]) != want or x.ndim != 4:
      raise UsageError(f"images must have shape [N, {', '.join(map(str, want))}] (or "
                       f"{list(want)} for one image), got {list(shape)}")
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
      raise UsageError(f"images must be integer grey levels, got dtype {x.dtype}")
    if x.size and (not np.all(np.isfinite(x)) or np.any(x != np.round(x))
                   or x.min() < 0 or x.max() >= self.num_levels):
      raise UsageError(f"images must hold whole grey levels in 0..{self.num_levels - 1} "
                       f"(the model's discretisation), got values in "
                       f"[{np.nanmin(x)}, {np.nanmax(x)}]: discretise them first "
                       f"(genmodels.images.data.discretise)")
    return x.astype(np.int32), single

  def log_prob(self, x) -> np.ndarray:
    """log P(x) in nats per image ([N], or a scalar for one image [H, W, C])."""
    x, single = self._check_images(x)
    if not len(x):
      return np.zeros((0,), np.float32)
    out = np.concatenate([np.asarray(self._log_prob(self.params, jnp.asarray(
        x[i:i + self.BATCH]))) for i in range(0, len(x), self.BATCH)])
    return out[0] if single else out

  def bits_per_dim(self, x) -> np.ndarray:
    """-log2 P(x) / (H W C) per image."""
    return -np.asarray(self.log_prob(x), np.float64) / (
        np.prod(self.image_shape) * np.log(2))

  def sample(self, key: jax.Array, n: int) -> np.ndarray:
    """n images, uint8 [n, H, W, C]; n an integer in [1, MAX_SAMPLES]."""
    n = density_trained.sample_count(n, self.MAX_SAMPLES, "images", "TrainedImageModel")
    return np.asarray(self._sample(self.params, key, n)).astype(np.uint8)


def save(model_dir: str, name: str, model_fields: dict, num_levels: int,
         image_shape, params) -> None:
  fields = {k: v for k, v in model_fields.items() if k not in ("num_levels", "image_shape")}
  density_trained.save(model_dir, name, fields, params)
  path = os.path.join(model_dir, "model.json")
  with open(path) as f:
    spec = json.load(f)
  spec.update(experiment="images", num_levels=int(num_levels),
              image_shape=[int(d) for d in image_shape])
  with open(path, "w") as f:
    json.dump(spec, f, indent=2)


def is_image_model(model_dir: str) -> bool:
  try:
    with open(os.path.join(model_dir, "model.json")) as f:
      return json.load(f).get("experiment") == "images"
  except (OSError, ValueError):
    return False


def load(model_dir: str) -> TrainedImageModel:
  with open(os.path.join(model_dir, "model.json")) as f:
    spec = json.load(f)
  shape = tuple(spec["image_shape"])
  model = cards.get_model(spec["name"], spec["num_levels"], shape, **spec["model"])
  x = jnp.zeros((4, *shape), jnp.int32)
  abstract = jax.eval_shape(lambda: base.init_variables(model, jax.random.key(0), x))
  params = ocp.StandardCheckpointer().restore(
      os.path.join(os.path.abspath(model_dir), "params"), abstract["params"])
  return TrainedImageModel(spec["name"], model, params, shape)


def load_density(workdir: str, name: str | None = None) -> TrainedImageModel:
  """Model ``name`` of an image workdir, or the best by validation bits/dim."""
  if name is None:
    with open(os.path.join(workdir, "results.json")) as f:
      rows = json.load(f).get("models") or {}
    scored = [n for n, r in rows.items() if r.get("validation_bpd") is not None]
    if not scored:
      raise UsageError(f"{workdir} holds no image model with a likelihood yet: run "
                       f"experiments/image_density.py --workdir={workdir} to the end, "
                       f"or pass a model's name")
    name = min(scored, key=lambda n: float(rows[n]["validation_bpd"]))
  model_dir = os.path.join(workdir, "models", name)
  if not is_image_model(model_dir):
    raise UsageError(f"no trained image model {name!r} in {workdir}/models (its "
                     f"model.json is missing: the run did not finish it)")
  return load(model_dir)
