"""The non-linearity experiment's tasks: each tabular model, Bernoulli loss, scored on test."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from genmodels.errors import UsageError
from genmodels.data import tabular as tabular_data
from genmodels.networks import tabular as tabular_models
from genmodels.nonlinearity import report
from genmodels.training import experiment


def bernoulli_loss(model: nn.Module):
  """Mean sigmoid cross-entropy (the NLL of a Bernoulli, nats) and accuracy."""

  def loss_fn(variables, batch, rng, train):
    del rng
    logits = model.apply(variables, batch["x"], train=train)
    labels = batch["label"].astype(logits.dtype)
    nll = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels))
    accuracy = jnp.mean((logits > 0) == (batch["label"] == 1))
    return nll, ({"nll": nll, "accuracy": accuracy}, {})

  return loss_fn


def bernoulli_eval(model: nn.Module):
  """Per-row NLL (nats) and correctness at the 1/2 threshold."""

  def eval_fn(variables, batch):
    logits = model.apply(variables, batch["x"], train=False)
    labels = batch["label"].astype(logits.dtype)
    return {"nll": optax.sigmoid_binary_cross_entropy(logits, labels),
            "accuracy": ((logits > 0) == (batch["label"] == 1)).astype(jnp.float32)}

  return eval_fn


def check(config) -> None:
  """Every field of the config, before anything is loaded, written or trained:
  sizes, then each model built from its fields and traced (``check_model``)."""
  for key in ("num_train", "num_test"):
    if not 0 < config[key] < float("inf"):
      raise UsageError(f"{key} must be a positive number, got {config[key]}")
  # A visitor's row: float32 features and a label, copied a few times at the peak.
  row_bytes = 16 * (tabular_data.NUM_FEATURES + 1)
  experiment.check_sizes({key: (config[key], row_bytes)
                          for key in ("num_train", "num_test")})
  for name in config.models:
    if name not in tabular_models.TABULAR_MODELS:
      raise UsageError(f"unknown model {name!r} in config.models; valid: "
                       f"{', '.join(tabular_models.TABULAR_MODELS)}")
  for name in config.models:  # all of them, before the first one trains
    check_model(name, config.models[name].model.to_dict())


def check_model(name: str, fields: dict) -> None:
  """Builds model ``name`` from its fields and traces (no compute) its init and
  its call in training and evaluation; a bad field is a one-line UsageError
  naming ``config.models.NAME.model``."""
  path = f"config.models.{name}.model"
  experiment.check_widths(path, fields, ("hidden",))
  x = jax.ShapeDtypeStruct((2, tabular_data.NUM_FEATURES), jnp.float32)

  def trace(model):
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    for train in (True, False):
      jax.eval_shape(lambda v, x, train=train: model.apply(v, x, train=train),
                     variables, x)

  experiment.check_model(path, lambda: tabular_models.get_tabular_model(name, **fields),
                         trace)


def unit_configs(config) -> dict:
  return dict(config.models.items())


def num_examples(config) -> int:
  return int(config.num_train)


def load_data(config):
  return tabular_data.load(config.num_train, config.num_test, config.seed)


def make_task(name, cfg, data) -> experiment.Task:
  train, test = data
  model = tabular_models.get_tabular_model(name, **cfg.model.to_dict())

  def report_row(result, workdir):
    del workdir
    variables = result.state.variables
    logits = jax.jit(lambda x: model.apply(variables, x))
    predict = lambda x: experiment.batched(  # P(y = 1) for features [N, F]
        lambda b: jax.nn.sigmoid(logits(b)), np.asarray(x, np.float32))
    row = report.row(result, predict, cfg)
    row["_history"] = result.history  # for the figures; not in results.json
    return row

  return experiment.Task(
      name=name, config=cfg,
      init=lambda k: jax.jit(model.init)(k, jnp.zeros((1, tabular_data.NUM_FEATURES))),
      loss=bernoulli_loss(model), train_data=train.as_dict(),
      eval_fn=bernoulli_eval(model),
      eval_data={"train_eval": train.as_dict(), "test": test.as_dict()},
      report=report_row)


def tasks(config, data, options):
  del options
  for name, cfg in config.models.items():
    yield make_task(name, cfg, data)
