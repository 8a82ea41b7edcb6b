"""The density experiment's tasks: fit each model of the ladder by maximum likelihood.

The loss (mean NLL) and the per-point evaluation are here; scoring against
the truth is ``report.score``.
"""

import functools
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp

from genmodels import models
from genmodels.errors import UsageError
from genmodels.data import world_map
from genmodels.density import config as config_lib
from genmodels.density import report
from genmodels.density import trained as trained_lib
from genmodels.training import experiment


def density_loss(model: nn.Module):
  """Maximum likelihood: the mean negative log-likelihood of the batch, in nats.

  A model that is not trained by maximum likelihood (``trains_by_nll`` False:
  a diffusion model's denoising loss, a VAE's negative ELBO, a GAN's two
  players, an energy model's contrastive divergence) trains on its own
  ``training_loss(x, rng) -> (loss, metrics)``; its mutable collections (a
  replay buffer, say) are updated by the step like BatchNorm statistics.
  """
  if not model.trains_by_nll:
    def own_loss(variables, batch, rng, train):
      del train
      mutable = [k for k in variables if k != "params"] or False
      out = model.apply(variables, batch["x"], rng, method="training_loss",
                        mutable=mutable)
      (loss, metrics), new_state = out if mutable else (out, {})
      return loss, (metrics, dict(new_state))
    return own_loss

  def loss_fn(variables, batch, rng, train):
    del rng, train
    nll = -jnp.mean(model.apply(variables, batch["x"], method="log_prob"))
    return nll, ({"nll": nll}, {})

  return loss_fn


def density_init(model: nn.Module, train_x):
  """rng -> variables: from the training points (data-dependent starts), jitted."""
  init = jax.jit(functools.partial(models.init_variables, model))
  return lambda k: init(k, train_x)


def density_eval(model: nn.Module):
  """The model's per-point ``eval_metrics`` (its NLL, inf where the model gives
  density 0, and any bound's) and the zero-density flag; None for an implicit
  model."""
  if not model.has_density:
    return None

  def eval_fn(variables, batch):
    out = model.apply(variables, batch["x"], method="eval_metrics")
    # nll_sq: the NLL's second moment, for the standard error of the KL.
    return {**out, "nll_sq": jnp.square(out["nll"]),
            "zero_density": (out["nll"] == jnp.inf).astype(jnp.float32)}

  return eval_fn


def model_names(config) -> list[str]:
  """The models ``config.model`` asks for, in order: names and the groups
  "ladder" and "taxonomy", comma-separated (e.g. "ladder,vae,gan"), each
  model once."""
  groups = {"ladder": config_lib.ladder(), "taxonomy": config_lib.taxonomy()}
  return models.select(config.model, models.cards(), config.models, groups)


def check(config) -> None:
  """The config's own fields, before anything is loaded or written.

  Sizes are bounded (``experiment.MAX_COUNT`` each) and must fit in this
  machine's memory together: a world-map point costs ~300 bytes at its peak
  (the rejection sampler's candidates, in ``world_map.load`` for the data and
  again in the yardstick's floor, which draws as many data points as the
  model's samples).
  """
  for key in ("num_train", "num_validation", "num_test", "num_samples"):
    if not 0 < config[key] < float("inf"):
      raise UsageError(f"{key} must be a positive number, got {config[key]}")
  names = model_names(config)
  data_keys = ("num_train", "num_validation", "num_test")
  counts = {key: config[key] for key in (*data_keys, "num_samples")}
  own = {n: f"models.{n}.num_samples" for n in names
         if config.models[n].get("num_samples") is not None}
  counts.update({key: config.models[n].num_samples for n, key in own.items()})
  experiment.check_sizes({key: (value, 0) for key, value in counts.items()})
  # The models are scored one after another: the largest count they use is the peak.
  used = {own.get(n, "num_samples") for n in names}
  peak = max(used, key=lambda key: counts[key])
  experiment.check_sizes({**{key: (counts[key], 300) for key in data_keys},
                          peak: (counts[peak], 310)})
  for name in names:
    check_model(name, config.models[name].model.to_dict())


def check_model(name: str, fields: dict) -> None:
  """Builds the model and traces (no compute) its init, log_prob and sample, so
  that a bad field fails here, in one line, before any workdir exists."""
  model = models.get_density_model(name, **fields)
  x, key = jnp.zeros((8, 2), jnp.float32), jax.random.key(0)
  try:
    variables = jax.eval_shape(lambda: models.init_variables(model, key, x))
    params = {"params": variables["params"]}
    if model.has_density:
      jax.eval_shape(lambda p: model.apply(p, x, method="log_prob"), params)
    jax.eval_shape(lambda p: model.apply(p, key, 8, method="sample"), params)
  except Exception as e:  # pylint: disable=broad-except
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise UsageError(f"model {name!r} cannot be built from its fields "
                     f"(config.models.{name}.model): {first}") from None


def unit_configs(config) -> dict:
  return {name: config.models[name] for name in model_names(config)}


def num_examples(config) -> int:
  return int(config.num_train)


def load_data(config) -> world_map.WorldMapData:
  return world_map.load(config.num_train, config.num_validation, config.num_test,
                        seed=config.seed)


def make_task(name: str, cfg, data: world_map.WorldMapData, seed: int,
              options: experiment.Options = experiment.Options(),
              num_samples: int = 1_000_000) -> experiment.Task:
  """Model ``name`` fitted by maximum likelihood, scored by ``report.score``."""
  model = models.get_density_model(name, **cfg.model.to_dict())
  train_x = jnp.asarray(data.train)

  def report_row(result, workdir):
    trained = trained_lib.TrainedDensity(name, model, result.state.params)
    trained_lib.save(os.path.join(workdir, "models", name), name,
                     cfg.model.to_dict(), result.state.params)
    samples = report.draw(trained, jax.random.key(seed + 1), num_samples)
    row = report.score(trained, data, result, samples)
    row["num_steps"] = int(cfg.train.num_steps)
    if options.figures:
      row["figures"] = report.figures(name, trained, result, data, workdir, samples,
                                      cfg.get("figure_cells_per_degree", 2))
    return row

  return experiment.Task(
      name=name, config=cfg,
      init=density_init(model, train_x),
      loss=density_loss(model),
      train_data={"x": data.train},
      eval_fn=density_eval(model),
      eval_prepare=jax.jit(functools.partial(models.with_normalizers, model)),
      eval_data=({"validation": {"x": data.validation}, "test": {"x": data.test}}
                 if model.has_density else None),
      report=report_row)


def tasks(config, data, options: experiment.Options):
  for name in model_names(config):
    print(f"== {name}", flush=True, file=sys.stderr)
    cfg = config.models[name]
    yield make_task(name, cfg, data, config.seed, options,
                    cfg.get("num_samples", config.num_samples))
