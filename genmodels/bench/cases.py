"""The benchmark's cases, built by the experiments' own task builders.

A ``Case`` (defined in ``spec``) names a model, an input, a batch size, a dtype, the train steps per
dispatch and the devices. ``build_task`` takes the experiment's config
(``genmodels/classify/config.py`` or ``genmodels/density/config.py``), applies
the case's overrides (batch size, dtype, steps per dispatch, conv_impl) and
builds the task with ``classify.make_task`` or ``density.make_task``: the same
model, loss and optimizer block that ``experiments/classify.py`` and
``experiments/density_mle.py`` train. The classifiers get random images of the
case's shape; the density models the world map's points.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

from genmodels import classify
from genmodels import density
from genmodels.classify import config as classify_config
from genmodels.data import images as images_lib
from genmodels.data import world_map
from genmodels.density import config as density_config
from genmodels.training import experiment

# The names and the case live in ``spec`` (no JAX there); cases.X keeps working.
from .spec import (CLASSIFIER_MODELS, DENSITY_MODELS, MODELS, QUICK_CASES,  # pylint: disable=unused-import
                   QUICK_NUM_DEVICES, QUICK_SCALING_MODELS, Case, check_model,
                   parse_shape, quick_cases)


def _train_overrides(train, case: Case) -> None:
  train.batch_size = case.batch_size
  train.steps_per_dispatch = max(case.steps_per_dispatch, 1)


def classify_unit(case: Case, base=None):
  """classify's config for the case: its variant (or ``base``) with the case's overrides."""
  if base is None:
    variant = {"mlp": "mlp", "cnn_fast": "fast"}.get(case.model, "cnn")
    base = classify_config.get_config(variant)
  config = base.copy_and_resolve_references()
  config.model = {"cnn_im2col": "cnn"}.get(case.model, case.model)
  if case.model in ("cnn", "cnn_im2col"):
    config.model_kwargs.conv_impl = "xla" if case.model == "cnn" else "im2col"
  if case.dtype != "float32":
    config.model_kwargs.dtype = jnp.dtype(case.dtype)
  _train_overrides(config.train, case)
  classify.resolve(config)  # as the entry point does: only the model's fields
  return config


def density_unit(case: Case, base=None):
  """density's unit config for the case: ``base`` (default: the default config) + overrides."""
  if case.dtype != "float32":
    raise NotImplementedError("the density models compute in float32 only")
  base = base if base is not None else density_config.get_config()
  unit = base.models[case.model].copy_and_resolve_references()
  _train_overrides(unit.train, case)
  return unit


def unit_config(case: Case, base=None):
  check_model(case.model)
  return classify_unit(case, base) if case.classifier else density_unit(case, base)


def synthetic_images(n: int, shape: tuple[int, ...], num_classes: int = 10,
                     seed: int = 0) -> tuple[images_lib.ImageData, images_lib.ImageData]:
  """(train, test) random uint8 images with random labels: the step's cost, not its accuracy."""
  rng = np.random.default_rng(seed)
  names = tuple(f"class {i}" for i in range(num_classes))

  def split(m):
    return images_lib.ImageData(rng.integers(0, 256, (m, *shape), dtype=np.uint8),
                                rng.integers(0, num_classes, m).astype(np.int32),
                                num_classes, names)

  return split(n), split(min(n, 256))


@functools.lru_cache(maxsize=4)
def world_map_points(n: int, seed: int = 0) -> world_map.WorldMapData:
  """``n`` training points of the world map (small held-out splits: not evaluated here)."""
  return world_map.load(n, 1000, 1000, seed=seed)


def data_size(case: Case) -> int:
  return max(4096, 4 * case.batch_size)


def build_task(case: Case, *, config=None, data=None, seed: int | None = None,
               size: int | None = None) -> tuple[experiment.Task, int]:
  """(task, seed) for ``case``, from the experiment's own task builder.

  ``config``: the experiment's whole config (default: the model's variant);
  ``data``: what the experiment's ``load_data`` returns (default: random
  images of the case's shape, or ``size`` world-map points).
  """
  unit = unit_config(case, config)
  n = size or data_size(case)
  if case.classifier:
    data = data if data is not None else synthetic_images(n, case.input_shape)
    seed = unit.seed if seed is None else seed
    task = classify.make_task(unit, data, experiment.Options(progress=False, figures=False))
  else:
    data = data if data is not None else world_map_points(n)
    seed = (config.seed if config is not None else 0) if seed is None else seed
    task = density.make_task(case.model, unit, data, seed,
                             experiment.Options(progress=False, figures=False))
  experiment.check_unit(case.model, unit, experiment.num_examples(task.train_data), seed)
  return task, seed
