"""The classification experiment's report: accuracy row, learning curves, confusion, predictions."""

import os

import jax
import jax.numpy as jnp
import numpy as np

from genmodels import plotting
from genmodels.training import experiment


def row(config, model, result, train, test, workdir, options, log_probs_fn) -> dict:
  """results.json of a classifier (and, with figures on, its figures)."""
  del model
  variables = result.state.variables
  test_metrics = result.last("test")
  results = {
      "test_accuracy": float(test_metrics["accuracy"]),
      "test_loss": float(test_metrics["loss"]),
      "num_params": experiment.num_params(variables),
      "num_trainable_params": experiment.num_params(result.state.params),
      "epochs": int(config.train.epochs),
      "train_seconds": float(result.train_seconds),
      "seconds_per_epoch": float(result.train_seconds / max(config.train.epochs, 1)),
      "model": config.model, "dataset": config.dataset,
  }
  if options.figures:
    predict = jax.jit(lambda x: jnp.argmax(log_probs_fn(variables, x), -1))
    pred = experiment.batched(predict, test.images,
                              batch_size=int(config.train.eval_batch_size))
    fig_dir = os.path.join(workdir, "figures")
    plotting.training_curves(result.history, f"{fig_dir}/learning_curves.png",
                             keys=["loss", "accuracy"],
                             title=f"{config.model} on {config.dataset}")
    confusion = np.zeros((train.num_classes, train.num_classes), np.int64)
    np.add.at(confusion, (test.labels, pred), 1)
    plotting.confusion_matrix(confusion, train.class_names, f"{fig_dir}/confusion.png")
    idx = np.random.default_rng(config.seed).choice(len(test.labels), 20, replace=False)
    plotting.prediction_grid(test.images[idx], test.labels[idx], pred[idx],
                             train.class_names, f"{fig_dir}/predictions.png")
  return results


summarize = experiment.only_row


def table(results: dict) -> str:
  r = results
  return (f"{r['model']} on {r['dataset']}: test accuracy {r['test_accuracy']:.4f}, "
          f"test loss {r['test_loss']:.4f}, {r['num_params']:,} parameters, "
          f"{r['epochs']} epochs in {r['train_seconds']:.1f} s of training")
