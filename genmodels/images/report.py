"""The image experiment's report: exact test bits per dimension, a table, sample grids.

Bits per dimension = mean over the *whole* test split of -log2 p(x), divided by
the D = H x W x C pixels of an image: the NLL in nats / (D ln 2). The images
are integer levels and every model's p is a probability mass, so this is the
exact code length of an ideal coder (no dequantization, no bound); a uniform
model over K levels scores log2 K.
"""

from __future__ import annotations

import math
import os

import jax
import numpy as np

from genmodels.images import cards
from genmodels.images import data as data_lib
from genmodels.training import experiment
from genmodels.training import preemption
from genmodels.training import provenance

LIKELIHOOD = "exact (discrete; no dequantization)"
TRAIN_SCORE_IMAGES = 10_000  # training images scored for the train bits/dim
EVAL_BATCH = 1000


def likelihood_label(model) -> str:
  """What a model's ``log_prob`` is: the exact mass, or the bound its class
  names in ``LIKELIHOOD`` (a flow's dequantization bound, a VAE's IWAE)."""
  if model.log_prob_is_bound:
    return model.LIKELIHOOD
  return LIKELIHOOD


def bits_per_dim(nll_nats, num_dims: int):
  """NLL in nats per image -> bits per dimension."""
  return np.asarray(nll_nats, np.float64) / (num_dims * math.log(2))


def nll_function(model, batch_size: int = EVAL_BATCH):
  """(params, x) -> -log p(x) in nats per image, float64 [N]: one jitted
  log_prob over padded batches of one shape (every split compiles once)."""
  fn = jax.jit(lambda p, b: model.apply({"params": p}, b, method="log_prob"))

  def nll(params, x: np.ndarray) -> np.ndarray:
    n = len(x)
    padded = -(-n // batch_size) * batch_size
    x = np.concatenate([x, np.repeat(x[:1], padded - n, 0)]) if padded > n else x
    lp = experiment.batched(lambda b: fn(params, b), x, batch_size=batch_size)
    return -lp[:n].astype(np.float64)

  return nll


def per_image_nll(model, params, x: np.ndarray) -> np.ndarray:
  """-log p(x) in nats per image, float64 [N]."""
  return nll_function(model, min(EVAL_BATCH, len(x)))(params, x)


def nll_summary(nll: np.ndarray, num_dims: int) -> dict:
  """Mean NLL (nats per image) and bits/dim, each with its standard error."""
  n = len(nll)
  mean = float(np.mean(nll))
  se = float(np.std(nll, ddof=1) / math.sqrt(n)) if n > 1 and np.all(np.isfinite(nll)) \
      else float("nan")
  return {"nll_nats": mean, "nll_nats_se": se,
          "bpd": float(bits_per_dim(mean, num_dims)),
          "bpd_se": float(bits_per_dim(se, num_dims))}


def score(name: str, model, params, data: data_lib.DiscreteImages, result) -> dict:
  """A model's results row: exact bits/dim on the whole test split (with its
  standard error), on validation and on (up to 10,000) training images."""
  phase = f"scoring model {name!r}"
  d = data.num_dims
  splits = [data.test, data.validation, data.train[:TRAIN_SCORE_IMAGES]]
  nll = nll_function(model, min(EVAL_BATCH, max(len(x) for x in splits)))
  test_nll = nll(params, data.test)
  test = nll_summary(test_nll, d)
  preemption.stop_if_requested(phase, local=True)
  row = {"test_bpd": test["bpd"], "test_bpd_se": test["bpd_se"],
         "test_nll_nats": test["nll_nats"], "test_nll_nats_se": test["nll_nats_se"],
         "num_test": len(data.test), "likelihood": likelihood_label(model),
         # Test images the model gives mass 0 (NLL inf): a real failure, counted.
         "zero_mass_test_images": int(np.sum(~np.isfinite(test_nll))),
         "num_params": experiment.num_params(params, model),
         "train_seconds": float(result.train_seconds)}
  row["train_bpd"] = nll_summary(nll(params, data.train[:TRAIN_SCORE_IMAGES]), d)["bpd"]
  row["validation_bpd"] = None
  if len(data.validation):
    row["validation_bpd"] = nll_summary(nll(params, data.validation), d)["bpd"]
  diag = jax.jit(lambda p, x: model.apply({"params": p}, x, method="diagnostics"))(
      params, data.test[:1])
  row.update({k: float(v) for k, v in diag.items()})
  preemption.stop_if_requested(phase, local=True)
  return row


def _pyplot():
  """matplotlib's pyplot on the Agg backend, imported when a figure is drawn
  (it takes seconds, and a run with --figures=false never needs it)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def image_grid(images: np.ndarray, num_levels: int, path: str, title: str = "",
               cols: int = 8) -> str:
  """Integer images [N, H, W, 1] as a grid, level 0 black and K-1 white."""
  plt = _pyplot()
  n = len(images)
  rows = -(-n // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(1.1 * cols, 1.1 * rows + 0.4),
                           squeeze=False)
  for i, ax in enumerate(axes.flat):
    ax.axis("off")
    if i < n:
      ax.imshow(images[i, ..., 0], cmap="gray", vmin=0, vmax=num_levels - 1,
                interpolation="nearest")
  if title:
    fig.suptitle(title, fontsize=9)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)
  return path


def figures(name, model, result, data, workdir, key, num_samples: int) -> list[str]:
  """figures/NAME_samples.png (a grid of samples) and, if trained, the NLL curve."""
  fig_dir = os.path.join(workdir, "figures")
  card = cards.card(name)
  sample = jax.jit(lambda p, k: model.apply({"params": p}, k, num_samples,
                                            method="sample"))
  samples = np.asarray(sample(result.state.params, key))
  paths = [image_grid(samples, data.num_levels, f"{fig_dir}/{name}_samples.png",
                      title=f"{card.display}: samples")]
  train_rows = [r for r in result.history if r["split"] == "train" and "nll" in r]
  if train_rows:
    plt = _pyplot()
    steps = [r["step"] for r in train_rows]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(steps, bits_per_dim([r["nll"] for r in train_rows], data.num_dims),
            label="train (batch)")
    for split in ("validation", "test"):
      evals = [r for r in result.history if r["split"] == split and "nll" in r]
      if evals:
        ax.plot([r["step"] for r in evals],
                bits_per_dim([r["nll"] for r in evals], data.num_dims), "o-", label=split)
    ax.set(xlabel="step", ylabel="bits / dim", title=f"{card.display}: NLL")
    ax.legend()
    path = f"{fig_dir}/{name}_training.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    paths.append(path)
  return [os.path.relpath(p, workdir) for p in paths]


def _setting(results: dict) -> str:
  s, k = results["image_size"], results["num_levels"]
  named = (s, k) in data_lib.SETTINGS.values()
  return (f"{results['dataset']}, {s}x{s} pixels, {k} levels"
          + (f" (the {data_lib.setting_name(s, k)!r} setting)" if named else ""))


def _num(value, fmt: str) -> str:
  return "—" if value is None else format(value, fmt)


def format_table(results: dict) -> str:
  lines = [f"Data: {_setting(results)}; {results['num_dims']} dimensions per image; "
           f"likelihood {LIKELIHOOD}. A uniform model scores log2 K = "
           f"{results['uniform_bpd']:.3f} bits/dim.", "",
           "| density | model | params | test bits/dim (± SE) | test NLL (nats/image) "
           "| validation bits/dim | train bits/dim | likelihood | train s |",
           "|---|---|---:|---:|---:|---:|---:|---|---:|"]
  for name, r in results["models"].items():
    card = cards.card(name)
    lines.append(
        f"| {card.branch} | {card.display} (`{name}`) | {r['num_params']:,} | "
        f"{r['test_bpd']:.4f} ± {r['test_bpd_se']:.4f} | "
        f"{r['test_nll_nats']:.2f} ± {r['test_nll_nats_se']:.2f} | "
        f"{_num(r['validation_bpd'], '.4f')} | {r['train_bpd']:.4f} | "
        f"{r['likelihood']} | {r['train_seconds']:.1f} |")
  return "\n".join(lines)


COLUMNS = """\
Columns: *params*, the model's degrees of freedom; *test bits/dim*, the mean
over the whole test split of -log2 p(x) divided by the pixels per image, with
its standard error (std / sqrt(N)); *test NLL*, the same in nats per image;
*validation* and *train bits/dim*, on the held-out end of the training split
and on up to 10,000 training images (the gap is overfitting); *likelihood*:
p(x) is the exact probability mass of the integer image, so bits/dim are
exact code lengths; *train s*, training seconds (0 steps: the closed-form MLE)."""


def summarize(config, data, rows, workdir, options, run) -> dict:
  """results.json's body; with figures on, report.md and a grid of test images."""
  results = {"dataset": config.dataset, "image_size": int(config.image_size),
             "num_levels": int(config.num_levels), "num_dims": data.num_dims,
             "setting": data_lib.setting_name(int(config.image_size),
                                              int(config.num_levels)),
             "num_train": len(data.train), "num_validation": len(data.validation),
             "num_test": len(data.test),
             # Each row says its own (exact mass, or which bound); here, all of them.
             "likelihood": "; ".join(sorted({r["likelihood"] for r in rows.values()})),
             "uniform_bpd": math.log2(int(config.num_levels)),
             "models": {name: {k: v for k, v in r.items() if k != "figures"}
                        for name, r in rows.items()}}
  if options.figures:
    image_grid(data.test[:int(config.num_figure_samples)], data.num_levels,
               os.path.join(workdir, "figures", "data.png"), title="test images")
    write_report(workdir, results, rows, run)
  return results


def write_report(workdir: str, results: dict, rows: dict, run: dict) -> str:
  lines = ["# Density MLE on images", "",
           "Exact bits per dimension on the whole test split: the images are "
           "integer levels, so each model's likelihood is a probability mass.", "",
           format_table(results), "", COLUMNS, "",
           f"Run: {provenance.describe(run)}.", "",
           "![test images](figures/data.png)", ""]
  for name, r in rows.items():
    card = cards.card(name)
    lines += [f"## {card.display} (`{name}`): {card.branch} density, "
              f"{card.family_label}", ""]
    lines += [f"![{p}]({p})" for p in r.get("figures", [])] + [""]
  path = os.path.join(workdir, "report.md")
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return path


def table(results: dict) -> str:
  return format_table(results)
