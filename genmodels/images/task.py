"""The image experiment's tasks: fit each discrete image model by maximum likelihood.

The loss and the per-image evaluation are the density experiment's
(``genmodels.density.task``: the mean NLL, or a model's own
``training_loss``); the images are integer levels, so the NLL is exact.
Scoring (bits per dimension) is ``report.score``.
"""

from __future__ import annotations

import functools
import os
import sys

import jax
import jax.numpy as jnp

from genmodels.density.task import density_eval, density_loss
from genmodels.errors import UsageError
from genmodels.images import cards
from genmodels.images import data as data_lib
from genmodels.images import report
from genmodels.images import trained
from genmodels.models import base
from genmodels.training import experiment


def model_names(config) -> list[str]:
  """The models ``config.model`` asks for: "all" or comma-separated names, each once."""
  return base.select(config.model, cards.IMAGE_CARDS, config.models,
                     {"all": cards.names()})


def num_examples(config) -> int:
  """Training images: num_train, or the whole training split less validation."""
  if config.num_train:
    return int(config.num_train)
  return 60_000 - int(config.num_validation)


def check(config) -> None:
  """The config's own fields, before anything is loaded or written."""
  if config.dataset not in data_lib.DATASETS:
    raise UsageError(f"unknown dataset {config.dataset!r}; valid: "
                     f"{', '.join(data_lib.DATASETS)}")
  size, levels = config.image_size, config.num_levels
  if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 28:
    raise UsageError(f"image_size must be a whole number in 1..28, got {size!r}")
  if isinstance(levels, bool) or not isinstance(levels, int) or not 2 <= levels <= 256:
    raise UsageError(f"num_levels must be a whole number in 2..256, got {levels!r}")
  for key in ("num_train", "num_validation", "num_test"):
    if not isinstance(config[key], int) or config[key] < 0:
      raise UsageError(f"{key} must be a whole number >= 0, got {config[key]!r}")
  if config.num_validation < 1:
    raise UsageError(f"num_validation must be a positive number of held-out training "
                     f"images (the validation row), got {config.num_validation}")
  if config.manual_dir and not os.path.isdir(config.manual_dir) and (
      config.dataset == "fashion_mnist_offline"
      or config.manual_dir != data_lib.FASHION_MNIST_DIR):  # named by the user
    raise UsageError(f"manual_dir {config.manual_dir} is not a folder: pass the folder "
                     f"with the 4 Fashion-MNIST *-ubyte.gz files")
  if config.dataset == "synthetic" and not (config.num_train and config.num_test):
    raise UsageError("dataset='synthetic' needs num_train > 0 and num_test > 0")
  if config.dataset == "fashion_mnist_offline":
    data_lib._split_sizes(config, 60_000, data_lib.TEST_SPLIT_SIZE)  # pylint: disable=protected-access
  # Each image at its peak: the 28x28 uint8 source and its int64 resize sums.
  each = 784 + 8 * size * size + size * size
  for key in ("num_figure_samples", "num_metric_samples", "yardstick_steps"):
    if isinstance(config[key], bool) or not isinstance(config[key], int) or config[key] < 0:
      raise UsageError(f"{key} must be a whole number >= 0, got {config[key]!r}")
  sizes = {"num_train": (num_examples(config), each),
           "num_figure_samples": (int(config.num_figure_samples), 0)}
  if config.num_metric_samples:  # 0: no sample yardstick
    sizes["num_metric_samples"] = (int(config.num_metric_samples), 0)
  experiment.check_sizes(sizes)
  for name in model_names(config):
    check_model(name, config.models[name].model.to_dict(), size, levels)


def build(name: str, fields: dict, num_levels: int, image_shape: tuple[int, int, int]):
  fields = {k: v for k, v in fields.items() if k not in ("num_levels", "image_shape")}
  return cards.get_model(name, num_levels, image_shape, **fields)


def check_model(name: str, fields: dict, image_size: int, num_levels: int) -> None:
  """Builds the model and traces its init, log_prob and sample (no compute)."""
  x = jnp.zeros((8, image_size, image_size, 1), jnp.uint8)
  key = jax.random.key(0)

  def trace(model):
    variables = jax.eval_shape(lambda: base.init_variables(model, key, x))
    params = {"params": variables["params"]}
    if model.has_density:
      jax.eval_shape(lambda p: model.apply(p, x, method="log_prob"), params)
    jax.eval_shape(lambda p: model.apply(p, key, 8, method="sample"), params)

  experiment.check_model(f"config.models.{name}.model",
                         lambda: build(name, fields, num_levels, x.shape[1:]), trace)


def unit_configs(config) -> dict:
  return {name: config.models[name] for name in model_names(config)}


def load_data(config) -> data_lib.DiscreteImages:
  return data_lib.load(config)


def make_task(name: str, cfg, data: data_lib.DiscreteImages, config,
              options: experiment.Options = experiment.Options()) -> experiment.Task:
  """Model ``name`` fitted by maximum likelihood (or its own loss), scored by
  ``report.score``: bits/dim and the sample yardstick."""
  model = build(name, cfg.model.to_dict(), data.num_levels, data.shape)
  init = jax.jit(functools.partial(base.init_variables, model))
  train_x = jnp.asarray(data.train)
  eval_data = {"test": {"x": data.test}}
  if len(data.validation):
    eval_data = {"validation": {"x": data.validation}, **eval_data}
  seed, num_metric = int(config.seed), int(config.num_metric_samples)

  def report_row(result, workdir):
    params = result.state.params
    trained.save(os.path.join(workdir, "models", name), name, cfg.model.to_dict(),
                 data.num_levels, data.shape, params)
    parts = samples = None
    num_figure = int(config.num_figure_samples) if options.figures else 0
    if num_metric:
      parts = report.sample_yardstick(data, workdir, num_metric, seed,
                                      int(config.yardstick_steps))
    num_draw = max(parts[2]["num_samples"] if parts else 0, num_figure)
    if num_draw:
      samples = report.draw(model, params, jax.random.key(seed + 1), num_draw)
    row = report.score(name, model, params, data, result,
                       samples[:parts[2]["num_samples"]] if parts else None, parts)
    row["num_steps"] = int(cfg.train.num_steps)
    if options.figures:
      row["figures"] = report.figures(name, model, params, result, data, workdir,
                                      samples[:num_figure])
    return row

  return experiment.Task(
      name=name, config=cfg,
      init=lambda k: init(k, train_x),
      loss=density_loss(model),
      train_data={"x": data.train},
      eval_fn=density_eval(model),
      eval_data=eval_data if model.has_density else None,
      report=report_row)


def tasks(config, data, options: experiment.Options):
  for name in model_names(config):
    print(f"== {name}", flush=True, file=sys.stderr)
    yield make_task(name, config.models[name], data, config, options)
