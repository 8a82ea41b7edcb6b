"""The classification experiment's task: a tfds image dataset, a classifier, its losses.

The losses live here, with the only experiment that uses them: categorical
cross-entropy (with label smoothing and random mirroring) for training, and
per-image loss and correctness (with mirror test-time augmentation) for
evaluation.
"""

import difflib
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from genmodels.errors import UsageError
from genmodels.classify import report
from genmodels.data import images as images_lib
from genmodels.networks import classifiers
from genmodels.training import experiment


# ------------------------------------------------------------------- losses

def _images(batch, dtype=jnp.float32):
  x = batch["image"]
  return x.astype(dtype) / 255.0 if x.dtype == jnp.uint8 else x.astype(dtype)


def random_flip(images, rng):
  """Mirrors each image left-right with probability 1/2 (a data augmentation)."""
  mirror = jax.random.bernoulli(rng, 0.5, (images.shape[0],) + (1,) * (images.ndim - 1))
  return jnp.where(mirror, images[:, :, ::-1], images)


def classification_loss(model: nn.Module, label_smoothing: float = 0.0,
                        flip: bool = False):
  """Categorical cross-entropy; BatchNorm statistics update, dropout is on.

  ``flip`` mirrors each training image with probability 1/2, with a key
  derived from the step's key (so resuming replays the same flips).
  """

  def loss_fn(variables, batch, rng, train):
    images = _images(batch)
    if flip and train:
      images = random_flip(images, jax.random.fold_in(rng, 1))
    # False, not []: with mutable=[] (a model without batch_stats, e.g. the
    # MLP) flax still returns a (logits, {}) pair.
    mutable = ([k for k in variables if k != "params"] if train else []) or False
    out = model.apply(variables, images, train=train,
                      rngs={"dropout": rng}, mutable=mutable)
    logits, new_state = out if mutable else (out, {})
    num_classes = logits.shape[-1]
    labels = optax.smooth_labels(jax.nn.one_hot(batch["label"], num_classes),
                                 label_smoothing)
    loss = jnp.mean(optax.softmax_cross_entropy(logits, labels))
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return loss, ({"accuracy": accuracy}, dict(new_state))

  return loss_fn


def classification_log_probs(model: nn.Module, variables, images,
                             tta_flip: bool = False):
  """Class log-probabilities in evaluation mode (BatchNorm's moving averages).

  ``tta_flip`` averages the probabilities of each image and its mirror image
  (test-time augmentation), which makes the prediction mirror-invariant.
  """
  images = _images({"image": images})
  log_p = jax.nn.log_softmax(model.apply(variables, images, train=False))
  if tta_flip:
    log_p_mirror = jax.nn.log_softmax(
        model.apply(variables, images[:, :, ::-1], train=False))
    log_p = jnp.logaddexp(log_p, log_p_mirror) - jnp.log(2.0)
  return log_p


def classification_eval(model: nn.Module, tta_flip: bool = False):
  """Per-image cross-entropy and correctness (see ``classification_log_probs``)."""

  def eval_fn(variables, batch):
    log_p = classification_log_probs(model, variables, batch["image"], tta_flip)
    loss = -jnp.take_along_axis(log_p, batch["label"][:, None], axis=-1)[:, 0]
    return {"loss": loss,
            "accuracy": (jnp.argmax(log_p, -1) == batch["label"]).astype(jnp.float32)}

  return eval_fn


# --------------------------------------------------------------- the bundle

def resolve(config) -> None:
  """Keeps only the ``model_kwargs`` the chosen model has (e.g. --model=mlp on the CNN config)."""
  if config.model not in classifiers.CLASSIFIERS:
    raise UsageError(f"unknown --model {config.model!r}; valid: "
                     f"{', '.join(classifiers.CLASSIFIERS)}")
  fields = classifiers.CLASSIFIERS[config.model].__dataclass_fields__
  known = set().union(*(c.__dataclass_fields__ for c in classifiers.CLASSIFIERS.values()))
  for key in config.model_kwargs:
    if key not in known:
      raise UsageError(f"model_kwargs.{key} is not a field of any classifier; "
                       f"{config.model}'s fields: {', '.join(sorted(fields))}")
  with config.unlocked():
    config.model_kwargs = ml_collections.ConfigDict(
        {k: v for k, v in config.model_kwargs.items() if k in fields})


def _check_dataset(name: str):
  """A tfds dataset name (``name[/config][:version]``) that tfds knows."""
  known = images_lib.tfds.list_builders(with_community_datasets=False)
  base = re.split(r"[/:]", name, maxsplit=1)[0]
  if base not in known:
    close = difflib.get_close_matches(base, known, n=3)
    raise UsageError(
        f"unknown --dataset {name!r}; valid: fashion_mnist_offline (local "
        f"files) or a tfds image-classification dataset such as mnist, "
        f"fashion_mnist, cifar10, cifar100"
        + (f" (did you mean {', '.join(close)}?)" if close else ""))


def check(config) -> None:
  _check_dataset(config.dataset)
  if not config.train.epochs > 0:
    raise UsageError(f"train.epochs must be a positive number, got {config.train.epochs}")
  for key in ("num_train", "num_test"):
    if not 0 <= config[key] < float("inf"):
      raise UsageError(f"{key} must be >= 0, got {config[key]}")
  if not 0 <= config.label_smoothing < 1:
    raise UsageError(f"label_smoothing must be in [0, 1), got {config.label_smoothing}")
  if config.data_dir and os.path.exists(config.data_dir) and not os.path.isdir(
      config.data_dir):
    raise UsageError(f"data_dir {config.data_dir} is not a folder")
  if config.dataset == "fashion_mnist_offline" and config.manual_dir:
    for prefix in ("train", "t10k"):  # tfds only asserts the folder is not empty
      images_lib.fashion_mnist_paths(config.manual_dir, prefix)


def unit_configs(config) -> dict:
  return {"": config}


def num_examples(config) -> int | None:
  return int(config.num_train) or None  # None: the whole split, size unknown yet


def load_data(config) -> tuple[images_lib.ImageData, images_lib.ImageData]:
  kwargs = dict(data_dir=config.data_dir or None, manual_dir=config.manual_dir or None)
  # num_train / num_test > 0: only the first examples are read and decoded.
  return (images_lib.load_image_dataset(config.dataset, "train", limit=config.num_train,
                                        **kwargs),
          images_lib.load_image_dataset(config.dataset, "test", limit=config.num_test,
                                        **kwargs))


def make_task(config, data, options=experiment.Options()) -> experiment.Task:
  train, test = data
  model = classifiers.get_classifier(config.model, num_classes=train.num_classes,
                                     **config.model_kwargs)
  sample = jnp.zeros((1, *train.images.shape[1:]), jnp.float32)
  return experiment.Task(
      name=None, config=config,
      init=lambda k: jax.jit(model.init, static_argnames="train")(
          {"params": k, "dropout": k}, sample, train=False),
      loss=classification_loss(model, config.label_smoothing, flip=config.flip),
      train_data={"image": train.images, "label": train.labels},
      eval_fn=classification_eval(model, tta_flip=config.tta_flip),
      eval_data={"test": {"image": test.images, "label": test.labels}},
      report=lambda result, workdir: report.row(
          config, model, result, train, test, workdir, options,
          lambda v, x: classification_log_probs(model, v, x, config.tta_flip)))


def tasks(config, data, options):
  yield make_task(config, data, options)
