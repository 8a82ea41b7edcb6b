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
from genmodels.images import figures as figures_lib
from genmodels.images import yardstick
from genmodels.training import experiment
from genmodels.training import metrics as metrics_lib
from genmodels.training import preemption
from genmodels.training import provenance

LIKELIHOOD = "exact (discrete; no dequantization)"
TRAIN_SCORE_IMAGES = 10_000  # training images scored for the train bits/dim
EVAL_BATCH = 1000


def likelihood_label(model) -> str:
  """What a model's ``log_prob`` is: the exact mass, or the bound its class
  names in ``bound_note`` (a flow's dequantization bound, a VAE's IWAE)."""
  if model.log_prob_is_bound:
    return model.bound_note
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


def draw(model, params, key, n: int, batch: int = 500) -> np.ndarray:
  """n samples, int32 [n, H, W, C], in batches of one shape (one compile), the
  stop flag honoured between batches."""
  sample = jax.jit(lambda p, k: model.apply({"params": p}, k, min(batch, n),
                                            method="sample"))
  out = []
  for i in range(-(-n // batch)):
    out.append(np.asarray(sample(params, jax.random.fold_in(key, i))))
    preemption.stop_if_requested("drawing samples for the sample yardstick", local=True)
  return np.concatenate(out)[:n]


_YARDSTICKS: dict = {}


def sample_yardstick(data: data_lib.DiscreteImages, workdir: str, n: int, seed: int,
                     steps: int = yardstick.TRAIN_STEPS):
  """(classifier, training reference, floors) of the run, built once: the
  classifier is trained with a fixed seed and cached in workdir/yardstick/."""
  key = (id(data), os.path.abspath(workdir), int(n), int(seed), int(steps))
  if key not in _YARDSTICKS:
    clf = yardstick.feature_classifier(data, os.path.join(workdir, "yardstick"),
                                       seed=seed, steps=steps)
    preemption.stop_if_requested("training the sample yardstick's classifier", local=True)
    ref = yardstick.reference(data, clf, n, seed)
    _YARDSTICKS.clear()  # one run's at a time
    _YARDSTICKS[key] = (clf, ref, yardstick.floors(data, clf, n, seed, ref=ref))
  return _YARDSTICKS[key]


def score(name: str, model, params, data: data_lib.DiscreteImages, result,
          samples: np.ndarray | None = None, yardstick_parts=None) -> dict:
  """A model's results row: bits/dim on the whole test split (exact, or the
  model's bound, with its standard error), on validation and on (up to
  10,000) training images; with ``samples``, the sample yardstick's columns,
  each with its floor."""
  phase = f"scoring model {name!r}"
  d = data.num_dims
  row = {"num_params": experiment.num_params(params, model),
         "train_seconds": float(result.train_seconds), "num_test": len(data.test),
         "likelihood": likelihood_label(model) if model.has_density else None,
         "test_bpd": None, "validation_bpd": None}
  if model.has_density:
    splits = [data.test, data.validation, data.train[:TRAIN_SCORE_IMAGES]]
    nll = nll_function(model, min(EVAL_BATCH, max(len(x) for x in splits)))
    test_nll = nll(params, data.test)
    test = nll_summary(test_nll, d)
    preemption.stop_if_requested(phase, local=True)
    row.update(test_bpd=test["bpd"], test_bpd_se=test["bpd_se"],
               test_nll_nats=test["nll_nats"], test_nll_nats_se=test["nll_nats_se"],
               # Test images the model gives mass 0 (NLL inf): a real failure, counted.
               zero_mass_test_images=int(np.sum(~np.isfinite(test_nll))))
    row["train_bpd"] = nll_summary(nll(params, data.train[:TRAIN_SCORE_IMAGES]), d)["bpd"]
    if len(data.validation):
      row["validation_bpd"] = nll_summary(nll(params, data.validation), d)["bpd"]
  diag = jax.jit(lambda p, x: model.apply({"params": p}, x, method="diagnostics"))(
      params, data.test[:1])
  row.update({k: float(v) for k, v in diag.items()})
  if samples is not None:
    clf, ref, floor = yardstick_parts
    scores = yardstick.score_samples(samples, ref, clf)
    row.update(yardstick.columns(scores, floor))
    row["sample_class_shares"] = scores["class_shares"]
  preemption.stop_if_requested(phase, local=True)
  return row


def figures(name, model, params, result, data, workdir, samples: np.ndarray) -> list[str]:
  """A model's figures (see ``figures_lib``), as paths relative to the workdir."""
  fig_dir = os.path.join(workdir, "figures")
  card = cards.card(name)
  paths = [figures_lib.image_grid(samples, data.num_levels, f"{fig_dir}/{name}_samples.png",
                                  title=f"{card.display}: samples"),
           figures_lib.neighbours(samples, data.train, data.num_levels,
                                  f"{fig_dir}/{name}_neighbours.png",
                                  f"{card.display}: samples and their nearest training "
                                  f"images (L2 over levels)")]
  if any(r["split"] == "train" and "nll" in r for r in result.history):
    paths.append(figures_lib.bits_per_dim_curve(
        result.history, data.num_dims, f"{fig_dir}/{name}_training.png",
        f"{card.display}: bits/dim"))
  if card.family == "variational autoencoder":
    paths += figures_lib.vae_latent(model, params, data, f"{fig_dir}/{name}_latent.png",
                                    f"{fig_dir}/{name}_decoded.png", card.display)
  return [os.path.relpath(p, workdir) for p in paths]


def _setting(results: dict) -> str:
  s, k = results["image_size"], results["num_levels"]
  named = (s, k) in data_lib.SETTINGS.values()
  return (f"{results['dataset']}, {s}x{s} pixels, {k} levels"
          + (f" (the {data_lib.setting_name(s, k)!r} setting)" if named else ""))


def _num(value, fmt: str) -> str:
  return "—" if value is None else format(value, fmt)


def _short_likelihood(label: str | None) -> str:
  if label is None:
    return "— (samples only)"
  return "exact" if label == LIKELIHOOD else f"bound: {label}"


def _metric(r: dict, key: str, fmt: str) -> str:
  if f"sample_{key}" not in r:
    return "—"
  return f"{r[f'sample_{key}']:{fmt}} ({r[f'sample_{key}_floor']:{fmt}})"


def format_table(results: dict) -> str:
  lines = [f"Data: {_setting(results)}; {results['num_dims']} dimensions per image. "
           f"A uniform model scores log2 K = {results['uniform_bpd']:.3f} bits/dim. "
           f"Likelihoods: {results['likelihood']}.", "",
           "| density | model | params | test bits/dim (± SE) | likelihood "
           "| validation bits/dim | train bits/dim | FD (floor) | precision (floor) "
           "| recall (floor) | class-share error (floor) | train s |",
           "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
  for name, r in results["models"].items():
    card = cards.card(name)
    bpd = "—" if r["test_bpd"] is None else f"{r['test_bpd']:.4f} ± {r['test_bpd_se']:.4f}"
    lines.append(
        f"| {card.branch} | {card.display} (`{name}`) | {r['num_params']:,} | {bpd} | "
        f"{_short_likelihood(r['likelihood'])} | {_num(r['validation_bpd'], '.4f')} | "
        f"{_num(r.get('train_bpd'), '.4f')} | {_metric(r, 'fd', '.2f')} | "
        f"{_metric(r, 'precision', '.3f')} | {_metric(r, 'recall', '.3f')} | "
        f"{_metric(r, 'class_share_max_abs', '.3f')} | {r['train_seconds']:.1f} |")
  return "\n".join(lines)


COLUMNS = """\
Columns: *params*, the model's degrees of freedom; *test bits/dim*, the mean
over the whole test split of -log2 P(x) divided by the pixels per image, with
its standard error (std / sqrt(N)); *likelihood*: "exact" where P(x) is the
exact probability mass of the integer image (bits/dim are exact code
lengths), else the bound the model reports (a flow's uniform-dequantization
bound, a VAE's importance-weighted bound: their bits/dim are upper bounds);
*validation* and *train bits/dim*, on the held-out end of the training split
and on up to 10,000 training images (the gap is overfitting). The sample
yardstick (N samples against N training images, in the features of this
run's own classifier; NOT Inception FID, not comparable to published
numbers): *FD*, the Fréchet distance of the features' Gaussians; *precision*
and *recall*, k-NN manifold coverage (k = 3); *class-share error*, the largest
gap between the samples' predicted class shares and the training images'.
In brackets beside each, its *floor*: the test split scored the same way at
the same N (what a perfect sampler scores). *train s*: training seconds
(0 steps: the closed-form MLE)."""


def summarize(config, data, rows, workdir, options, run) -> dict:
  """results.json's body; with figures on, report.md, a grid of test images
  and the bits/dim-against-time curves of every model."""
  results = {"dataset": config.dataset, "image_size": int(config.image_size),
             "num_levels": int(config.num_levels), "num_dims": data.num_dims,
             "setting": data_lib.setting_name(int(config.image_size),
                                              int(config.num_levels)),
             "num_train": len(data.train), "num_validation": len(data.validation),
             "num_test": len(data.test),
             # Each row says its own (exact mass, or which bound); here, all of them.
             "likelihood": "; ".join(sorted({r["likelihood"] for r in rows.values()
                                             if r["likelihood"]})),
             "uniform_bpd": math.log2(int(config.num_levels)),
             "models": {name: {k: v for k, v in r.items() if k != "figures"}
                        for name, r in rows.items()}}
  parts = next(iter(_YARDSTICKS.values()), None)
  if parts is not None and any("sample_fd" in r for r in rows.values()):
    clf, _, floor = parts
    results["sample_yardstick"] = {
        "features": "this run's own Fashion-MNIST classifier (not Inception: "
                    "not comparable to published FID)",
        "classifier_fingerprint": clf.fingerprint,
        "classifier_test_accuracy": clf.test_accuracy, "n": floor["num_samples"],
        "floor": {k: floor[k] for k in yardstick.SCALAR_KEYS}}
  if options.figures:
    fig_dir = os.path.join(workdir, "figures")
    figures_lib.image_grid(data.test[:int(config.num_figure_samples)], data.num_levels,
                           os.path.join(fig_dir, "data.png"), title="test images")
    histories = {n: metrics_lib.read_metrics(os.path.join(workdir, "models", n,
                                                          "metrics.jsonl"))
                 for n in rows if rows[n]["validation_bpd"] is not None}
    figures_lib.bits_per_dim_vs_time(
        histories, data.num_dims, os.path.join(fig_dir, "bpd_vs_time.png"),
        {n: rows[n]["likelihood"] != LIKELIHOOD for n in histories})
    write_report(workdir, results, rows, run)
  return results


def write_report(workdir: str, results: dict, rows: dict, run: dict) -> str:
  lines = ["# Density MLE on images", "",
           "Bits per dimension on the whole test split: the images are integer "
           "levels, so a likelihood is a probability mass (exact, or a bound "
           "where the row says so).", "",
           format_table(results), "", COLUMNS, "",
           f"Run: {provenance.describe(run)}.", "",
           "![test images](figures/data.png)",
           "![bits/dim against wall time](figures/bpd_vs_time.png)", ""]
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
