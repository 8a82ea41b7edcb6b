"""The non-linearity experiment's report: rows, the Bayes limit, decision surfaces.

``row`` scores one model (test accuracy and NLL, the range of its
P(subscribe)); ``summarize`` adds the true probabilities (the Bayes classifier),
the constant predictor and the MLP's margin; the figures show what each model
learned.
"""

import os
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from genmodels.data import tabular as tabular_data
from genmodels.training import experiment
from genmodels.training import metrics as metrics_lib


def row(result, predict, cfg) -> dict:
  """A model's results row: test and train metrics, the range of its P(subscribe)."""
  test_m, train_m = result.last("test"), result.last("train_eval")
  _, jj, vv = _grid(tabular_data.MAX_VISITS + 1)
  p_grid = predict(tabular_data.features(jj.ravel(), vv.ravel()))
  return {
      "test_accuracy": float(test_m["accuracy"]),
      "test_nll": float(test_m["nll"]),
      "train_accuracy": float(train_m["accuracy"]),
      "train_nll": float(train_m["nll"]),
      # The range of P(subscribe) over every (job, visits): the linear model's
      # stays near 1/2, which side of 1/2 it falls on is noise.
      "p_min": float(p_grid.min()),
      "p_max": float(p_grid.max()),
      "num_params": experiment.num_params(result.state.params),
      "train_seconds": float(result.train_seconds),
      "num_steps": int(cfg.train.num_steps),
      "_predict": predict,  # for the figures; not in results.json
  }


def summarize(config, data, rows, workdir, options, run) -> dict:
  """results.json: each model's row, the Bayes limit, marginals and the margin."""
  del config, run
  train, test = data
  public = {name: {k: v for k, v in r.items() if not k.startswith("_")}
            for name, r in rows.items()}
  out = {"models": public, "bayes": tabular_data.bayes_metrics(test),
         "constant_predictor": {"accuracy": float(max(test.label.mean(),
                                                      1 - test.label.mean())),
                                "nll": float(np.log(2.0))},
         "marginal_subscription_rates_train": tabular_data.marginal_rates(train)}
  if "linear" in public and "mlp" in public:
    lin, mlp = public["linear"], public["mlp"]
    out["margin"] = {
        "test_accuracy": mlp["test_accuracy"] - lin["test_accuracy"],
        "test_nll": lin["test_nll"] - mlp["test_nll"],
    }
  if options.figures:
    predictors = {name: r["_predict"] for name, r in rows.items()}
    histories = {name: r["_history"] for name, r in rows.items()}
    fig_dir = os.path.join(workdir, "figures")
    paths = [decision_surfaces(predictors, f"{fig_dir}/decision_surfaces.png"),
             probability_curves(predictors, f"{fig_dir}/probability_curves.png"),
             training_curves(histories, f"{fig_dir}/training.png")]
    out["figures"] = [os.path.relpath(p, workdir) for p in paths]
  return metrics_lib.to_python(out)


def table(results: dict) -> str:
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
