"""Why activations: a linear model and an MLP on chapter 2's subscription data.

``fit_classifier`` trains one model from ``models.tabular`` with the shared loop
(sigmoid cross-entropy) and scores it on the test set; ``run`` trains every
model of a config the same way, compares them with the true probabilities
(the Bayes classifier) and writes ``results.json``; ``decision_surfaces`` and
``probability_curves`` draw what each model learned.
"""

import json
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import ml_collections
import numpy as np
import optax

from genmodels.data import tabular as tabular_data
from genmodels.models import tabular as tabular_models
from genmodels.training import loop
from genmodels.training import metrics as metrics_lib


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


def make_optimizer(cfg) -> optax.GradientTransformation:
  """Adam with linear warm-up and cosine decay."""
  steps = max(int(cfg.num_steps), 1)
  warmup = min(int(cfg.warmup_steps), steps // 2)
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, cfg.learning_rate, warmup, steps, end_value=cfg.learning_rate * 0.01)
  return optax.adam(schedule)


def loop_config(cfg, seed: int, progress: bool) -> loop.LoopConfig:
  return loop.LoopConfig(
      num_steps=int(cfg.num_steps), batch_size=int(cfg.batch_size), seed=seed,
      log_every=int(cfg.log_every), eval_every=int(cfg.get("eval_every", 0)),
      eval_batch_size=int(cfg.get("eval_batch_size", 4096)),
      checkpoint_every=int(cfg.checkpoint_every),
      steps_per_dispatch=int(cfg.steps_per_dispatch), progress=progress)


def num_params(params) -> int:
  return int(sum(np.size(p) for p in jax.tree.leaves(params)))


def fit_classifier(name: str, cfg: ml_collections.ConfigDict,
                   train: tabular_data.Subscriptions,
                   test: tabular_data.Subscriptions, workdir: str, seed: int = 0,
                   progress: bool = True):
  """Trains model ``name`` (a key of ``models.tabular.TABULAR_MODELS``).

  ``cfg`` holds ``model`` (the module's attributes) and the training knobs.
  Returns (row of results.json, predict function x -> P(y=1), TrainResult).
  """
  model = tabular_models.get_tabular_model(name, **cfg.model.to_dict())
  model_dir = os.path.join(workdir, "models", name)
  result = loop.train(
      init_fn=lambda k: jax.jit(model.init)(k, jnp.zeros((1, tabular_data.NUM_FEATURES))),
      loss_fn=bernoulli_loss(model), tx=make_optimizer(cfg),
      train_data=train.as_dict(), config=loop_config(cfg, seed, progress),
      workdir=model_dir, eval_fn=bernoulli_eval(model),
      eval_data={"train_eval": train.as_dict(), "test": test.as_dict()})
  variables = result.state.variables
  logits_fn = jax.jit(lambda v, x: model.apply(v, x))

  def predict(x, chunk: int = 1024) -> np.ndarray:
    """P(y = 1) for features [N, F], in padded chunks of one size (one compile)."""
    x = np.asarray(x, np.float32)
    out = []
    for i in range(0, len(x), chunk):
      part = x[i:i + chunk]
      padded = np.concatenate([part, np.zeros((chunk - len(part), x.shape[1]),
                                              np.float32)])
      out.append(np.asarray(jax.nn.sigmoid(logits_fn(variables, padded)))[:len(part)])
    return np.concatenate(out)

  test_m, train_m = result.last("test"), result.last("train_eval")
  _, jj, vv = _grid(tabular_data.MAX_VISITS + 1)
  p_grid = predict(tabular_data.features(jj.ravel(), vv.ravel()))
  row = {
      "test_accuracy": float(test_m["accuracy"]),
      "test_nll": float(test_m["nll"]),
      "train_accuracy": float(train_m["accuracy"]),
      "train_nll": float(train_m["nll"]),
      # The range of P(subscribe) over every (job, visits): the linear model's
      # stays near 1/2, which side of 1/2 it falls on is noise.
      "p_min": float(p_grid.min()),
      "p_max": float(p_grid.max()),
      "num_params": num_params(variables["params"]),
      "train_seconds": float(result.train_seconds),
      "num_steps": int(cfg.num_steps),
  }
  return row, predict, result


def summarize(rows: dict[str, dict], test: tabular_data.Subscriptions,
              train: tabular_data.Subscriptions) -> dict[str, Any]:
  """results.json: each model's row, the Bayes limit, marginals and the margin."""
  out = {"models": rows, "bayes": tabular_data.bayes_metrics(test),
         "constant_predictor": {"accuracy": float(max(test.label.mean(),
                                                      1 - test.label.mean())),
                                "nll": float(np.log(2.0))},
         "marginal_subscription_rates_train": tabular_data.marginal_rates(train)}
  if "linear" in rows and "mlp" in rows:
    lin, mlp = rows["linear"], rows["mlp"]
    out["margin"] = {
        "test_accuracy": mlp["test_accuracy"] - lin["test_accuracy"],
        "test_nll": lin["test_nll"] - mlp["test_nll"],
    }
  return metrics_lib.to_python(out)


def write_results(workdir: str, results: dict) -> str:
  path = os.path.join(workdir, "results.json")
  with open(path + ".tmp", "w") as f:
    json.dump(results, f, indent=2)
  os.replace(path + ".tmp", path)
  return path


def run(config: ml_collections.ConfigDict, workdir: str, progress: bool = True,
        figures: bool = True) -> dict[str, Any]:
  """Trains every model in ``config.models``; writes results.json and figures."""
  train, test = tabular_data.load(config.num_train, config.num_test, config.seed)
  rows, predictors, histories = {}, {}, {}
  for name, cfg in config.models.items():
    rows[name], predictors[name], result = fit_classifier(
        name, cfg, train, test, workdir, seed=config.seed, progress=progress)
    histories[name] = result.history
  results = summarize(rows, test, train)
  if figures:
    fig_dir = os.path.join(workdir, "figures")
    paths = [decision_surfaces(predictors, f"{fig_dir}/decision_surfaces.png"),
             probability_curves(predictors, f"{fig_dir}/probability_curves.png"),
             training_curves(histories, f"{fig_dir}/training.png")]
    results["figures"] = [os.path.relpath(p, workdir) for p in paths]
  write_results(workdir, results)
  return results


def format_table(results: dict) -> str:
  lines = ["| model | params | test accuracy | test NLL (nats) | train s |",
           "|---|---:|---:|---:|---:|"]
  for name, r in results["models"].items():
    lines.append(f"| {name} | {r['num_params']:,} | {r['test_accuracy']:.3f} | "
                 f"{r['test_nll']:.3f} | {r['train_seconds']:.1f} |")
  b = results["bayes"]
  lines.append(f"| true probabilities (Bayes) | - | {b['accuracy']:.3f} | "
               f"{b['nll']:.3f} | - |")
  if "margin" in results:
    m = results["margin"]
    lines += ["", f"MLP - linear: accuracy {m['test_accuracy']:+.3f}, "
                  f"NLL {-m['test_nll']:+.3f} nats"]
  return "\n".join(lines)


# Figures.

def _save(fig, path):
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)
  return path


def _grid(num_visits: int = 121):
  visits = np.linspace(0, tabular_data.MAX_VISITS, num_visits)
  jobs = np.arange(len(tabular_data.JOB_TITLES))
  jj, vv = np.meshgrid(jobs, visits, indexing="ij")
  return visits, jj, vv


def decision_surfaces(predictors: dict[str, Callable], path: str):
  """P(subscribe) over (visits, job title): the truth, then each model.

  Black bars mark where P crosses 1/2 in each row: the decision boundary.
  """
  visits, jj, vv = _grid()
  panels = {"truth": tabular_data.subscribe_probability(jj, vv)}
  x = tabular_data.features(jj.ravel(), vv.ravel())
  for name, predict in predictors.items():
    panels[name] = predict(x).reshape(jj.shape)
  fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2),
                           sharey=True, squeeze=False)
  for ax, (name, p) in zip(axes[0], panels.items()):
    im = ax.imshow(p, aspect="auto", origin="lower", cmap="RdBu_r", vmin=0, vmax=1,
                   interpolation="nearest",
                   extent=(visits[0], visits[-1], -0.5, len(tabular_data.JOB_TITLES) - 0.5))
    for row, p_row in enumerate(p):  # The decision boundary: where P crosses 1/2.
      for k in np.flatnonzero(np.diff(np.sign(p_row - 0.5)) != 0):
        t = (0.5 - p_row[k]) / (p_row[k + 1] - p_row[k])
        v = visits[k] + t * (visits[k + 1] - visits[k])
        ax.plot([v, v], [row - 0.45, row + 0.45], color="k", lw=1.5)
    ax.set(title=f"{name}: P from {p.min():.2f} to {p.max():.2f}",
           xlabel="visits last month")
  axes[0, 0].set_yticks(range(len(tabular_data.JOB_TITLES)), tabular_data.JOB_TITLES)
  fig.colorbar(im, ax=axes[0].tolist(), label="P(subscribe)")
  return _save(fig, path)


def probability_curves(predictors: dict[str, Callable], path: str):
  """P(subscribe | visits) for ML engineers and for the other jobs, per model."""
  visits = np.linspace(0, tabular_data.MAX_VISITS, 121)
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True)
  for ax, (title, job) in zip(axes, (("ML engineer", tabular_data.ML_ENGINEER),
                                     ("software engineer", 2))):
    jobs = np.full(visits.shape, job)
    ax.plot(visits, tabular_data.subscribe_probability(jobs, visits), "k--",
            label="truth")
    x = tabular_data.features(jobs, visits)
    for name, predict in predictors.items():
      ax.plot(visits, predict(x), label=name)
    ax.axhline(0.5, color="grey", lw=0.5)
    ax.set(title=title, xlabel="visits last month", ylim=(0, 1))
  axes[0].set_ylabel("P(subscribe)")
  axes[1].legend()
  return _save(fig, path)


def training_curves(histories: dict[str, list[dict]], path: str):
  """Training NLL over steps, one line per model, with log 2 marked."""
  fig, ax = plt.subplots(figsize=(5.5, 3.4))
  for name, history in histories.items():
    pts = [(r["step"], r["nll"]) for r in history if r["split"] == "train"]
    if pts:
      ax.plot(*zip(*pts), label=name)
  ax.axhline(np.log(2), color="k", ls="--", lw=0.8, label="log 2 (constant 1/2)")
  ax.set(xlabel="step", ylabel="train NLL (nats)")
  ax.legend()
  return _save(fig, path)
