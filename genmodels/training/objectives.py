"""Losses and per-example eval metrics for the two kinds of model.

Each ``*_loss`` returns a ``steps.LossFn``; each ``*_eval`` an eval function
``(variables, batch) -> dict of per-example [B] metrics`` that ``loop.evaluate``
averages over a whole split.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


def density_loss(model: nn.Module):
  """Maximum likelihood: the mean negative log-likelihood of the batch, in nats."""

  def loss_fn(variables, batch, rng, train):
    del rng, train
    nll = -jnp.mean(model.apply(variables, batch["x"], method="log_prob"))
    return nll, ({"nll": nll}, {})

  return loss_fn


def density_eval(model: nn.Module):
  """Per-point NLL (inf where the model gives density 0) and the zero-density flag."""

  def eval_fn(variables, batch):
    log_p = model.apply(variables, batch["x"], method="log_prob")
    return {"nll": -log_p, "zero_density": (log_p == -jnp.inf).astype(jnp.float32)}

  return eval_fn


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
