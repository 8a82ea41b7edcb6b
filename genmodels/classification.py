"""Image classification on the shared engine: chapter 2's MLP and CNN.

``train_and_evaluate(config, workdir)`` loads a tfds dataset, builds a
classifier by name, trains it with the same loop, state and checkpoints as the
density experiment, and writes results.json, metrics and figures.
"""

import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from genmodels import plotting
from genmodels.data import images as images_lib
from genmodels.models import classifiers
from genmodels.training import loop
from genmodels.training import metrics as metrics_lib
from genmodels.training import objectives
from genmodels.training import provenance


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int):
  """The book's Adam at a constant rate, or a one-cycle schedule with AdamW."""
  total = config.epochs * steps_per_epoch
  if config.get("schedule", "constant") == "constant":
    lr = config.learning_rate
  elif config.schedule == "onecycle":
    lr = optax.cosine_onecycle_schedule(total, config.learning_rate,
                                        pct_start=config.get("warmup_fraction", 0.15),
                                        div_factor=10.0, final_div_factor=100.0)
  else:
    raise ValueError(f"unknown schedule {config.schedule!r}; valid: constant, onecycle")
  if config.get("weight_decay", 0.0):
    return optax.adamw(lr, weight_decay=config.weight_decay)
  return optax.adam(lr)


def load_data(config) -> tuple[images_lib.ImageData, images_lib.ImageData]:
  kwargs = dict(data_dir=config.get("data_dir") or None,
                manual_dir=config.get("manual_dir") or None)
  train = images_lib.load_image_dataset(config.dataset, "train", **kwargs)
  test = images_lib.load_image_dataset(config.dataset, "test", **kwargs)
  if config.get("num_train"):
    train = images_lib.ImageData(train.images[:config.num_train],
                                 train.labels[:config.num_train],
                                 train.num_classes, train.class_names)
  if config.get("num_test"):
    test = images_lib.ImageData(test.images[:config.num_test],
                                test.labels[:config.num_test],
                                test.num_classes, test.class_names)
  return train, test


def _predict(model, variables, images, tta_flip=False, batch_size=2048):
  fn = jax.jit(lambda v, x: jnp.argmax(
      objectives.classification_log_probs(model, v, x, tta_flip), -1))
  return np.concatenate([np.asarray(fn(variables, images[i:i + batch_size]))
                         for i in range(0, len(images), batch_size)])


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       progress: bool = True) -> dict[str, Any]:
  t_start = time.perf_counter()
  steal = provenance.StealMeter()
  train, test = load_data(config)
  t_data = time.perf_counter() - t_start
  model = classifiers.get_classifier(config.model, num_classes=train.num_classes,
                                     **config.get("model_kwargs", {}))
  steps_per_epoch = len(train.labels) // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"batch_size={config.batch_size} is larger than the "
                     f"{len(train.labels)} training images: lower --batch_size")
  loop_config = loop.LoopConfig(
      num_steps=config.epochs * steps_per_epoch, batch_size=config.batch_size,
      seed=config.seed, log_every=steps_per_epoch, eval_every=steps_per_epoch,
      eval_batch_size=config.get("eval_batch_size", 1000),
      checkpoint_every=steps_per_epoch * config.get("checkpoint_every_epochs", 1),
      steps_per_dispatch=config.get("steps_per_dispatch", 1), progress=progress,
      num_devices=config.get("num_devices", None))
  sample = jnp.zeros((1, *train.images.shape[1:]), jnp.float32)
  result = loop.train(
      init_fn=lambda k: jax.jit(model.init, static_argnames="train")(
          {"params": k, "dropout": k}, sample, train=False),
      loss_fn=objectives.classification_loss(model, config.get("label_smoothing", 0.0),
                                             flip=config.get("flip", False)),
      tx=make_optimizer(config, steps_per_epoch),
      train_data={"image": train.images, "label": train.labels},
      config=loop_config, workdir=workdir,
      eval_fn=objectives.classification_eval(model, tta_flip=config.get("tta_flip", False)),
      eval_data={"test": {"image": test.images, "label": test.labels}})

  variables = result.state.variables
  test_metrics = result.last("test")
  pred = _predict(model, variables, test.images, config.get("tta_flip", False))
  num_trainable = sum(np.size(p) for p in jax.tree.leaves(result.state.params))
  num_state = sum(np.size(p) for p in jax.tree.leaves(result.state.model_state))
  results = {
      "test_accuracy": float(test_metrics["accuracy"]),
      "test_loss": float(test_metrics["loss"]),
      "num_params": int(num_trainable + num_state),
      "num_trainable_params": int(num_trainable),
      "epochs": int(config.epochs),
      "train_seconds": float(result.train_seconds),
      "data_seconds": float(t_data),
      "seconds_per_epoch": float(result.train_seconds / max(config.epochs, 1)),
      "model": config.model, "dataset": config.dataset,
  }
  # Everything so far: data, compilation, training, the per-epoch evaluations.
  results["wall_seconds"] = float(time.perf_counter() - t_start)
  results["run"] = provenance.run_record(steal)
  metrics_lib.write_json_atomic(os.path.join(workdir, "results.json"), results)

  fig_dir = os.path.join(workdir, "figures")
  plotting.training_curves(result.history, f"{fig_dir}/learning_curves.png",
                           keys=["loss", "accuracy"],
                           title=f"{config.model} on {config.dataset}")
  confusion = np.zeros((train.num_classes, train.num_classes), np.int64)
  np.add.at(confusion, (test.labels, pred), 1)
  plotting.confusion_matrix(confusion, train.class_names, f"{fig_dir}/confusion.png")
  rng = np.random.default_rng(config.seed)
  idx = rng.choice(len(test.labels), 20, replace=False)
  plotting.prediction_grid(test.images[idx], test.labels[idx], pred[idx],
                           train.class_names, f"{fig_dir}/predictions.png")
  return results
