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


def classification_loss(model: nn.Module, label_smoothing: float = 0.0):
  """Categorical cross-entropy; BatchNorm statistics update, dropout is on."""

  def loss_fn(variables, batch, rng, train):
    # False, not []: with mutable=[] (a model without batch_stats, e.g. the
    # MLP) flax still returns a (logits, {}) pair.
    mutable = ([k for k in variables if k != "params"] if train else []) or False
    out = model.apply(variables, _images(batch), train=train,
                      rngs={"dropout": rng}, mutable=mutable)
    logits, new_state = out if mutable else (out, {})
    num_classes = logits.shape[-1]
    labels = optax.smooth_labels(jax.nn.one_hot(batch["label"], num_classes),
                                 label_smoothing)
    loss = jnp.mean(optax.softmax_cross_entropy(logits, labels))
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return loss, ({"accuracy": accuracy}, dict(new_state))

  return loss_fn


def classification_eval(model: nn.Module):
  """Per-image cross-entropy and correctness, with BatchNorm's moving averages."""

  def eval_fn(variables, batch):
    logits = model.apply(variables, _images(batch), train=False)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    return {"loss": loss,
            "accuracy": (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)}

  return eval_fn
