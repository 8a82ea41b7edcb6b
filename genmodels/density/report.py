"""The density experiment's report: each model scored against the truth, a table, figures.

``score`` is the one world-map scoring every density-like model gets: held-out
NLL minus the data's exact entropy is KL(p_data || p_model), plus the share of
test points the model rules out and the land precision of its samples.
"""

import os

import jax
import numpy as np

from genmodels import plotting
from genmodels import probability
from genmodels import yardstick
from genmodels.data import world_map
from genmodels.training import experiment
from genmodels.training import provenance

SAMPLE_CHUNK = 100_000  # samples drawn per call: bounds the memory of a flow's inverse

DISPLAY_NAMES = {
    "box": "uniform box",
    "gaussian_diag": "Gaussian, diagonal",
    "gaussian_full": "Gaussian, full covariance",
    "gmm": "mixture of Gaussians",
    "realnvp": "RealNVP (affine couplings)",
    "spline_flow": "rational-quadratic spline flow",
    "autoregressive": "autoregressive p(lat) p(lon∣lat)",
    "ebm": "energy-based model (CD, Langevin)",
    "ensemble": "ensemble: autoregressive + spline flow",
}

COLUMNS = """\
Columns: *params*, the model's degrees of freedom; *test NLL*, the mean negative
log-density of the held-out points (nats, degrees²); *KL to truth*, test NLL minus
the data's exact entropy, which is KL(p_data ‖ p_model) (inf if the model gives
some test point density 0: then the KL on the points it covers is shown);
*zero-density test pts*, the share of such points; *land precision*, the share of
the model's samples that fall on land; *binned KL 1°*, the sample yardstick:
KL from the data's exact distribution over 1° cells to the histogram of the
model's samples (add-1/2 smoothing; a perfect sampler scores the floor given in
``yardstick.yardstick_floor``), and *recall 1°*, the share of the data's mass in
cells the samples reach (``genmodels/yardstick.py``; results.json also has 4°
and 0.25° and the recall per continent); *train s*, training seconds
(evaluations excluded)."""


def draw(trained, key, n: int) -> np.ndarray:
  """n samples [n, 2], drawn in chunks of ``SAMPLE_CHUNK``."""
  chunks = [trained.sample(jax.random.fold_in(key, i), min(SAMPLE_CHUNK, n - start))
            for i, start in enumerate(range(0, n, SAMPLE_CHUNK))]
  return np.concatenate(chunks)


def score(trained, data: world_map.WorldMapData, result, seed: int,
          num_samples: int) -> dict:
  """A density model's results row: the loop's last evaluation, then its samples.

  Held-out NLL and KL to the truth from the exact density; land precision,
  recall and binned KLs from ``num_samples`` samples (``yardstick``).
  """
  test, val = result.last("test"), result.last("validation")
  samples = draw(trained, jax.random.key(seed + 1), num_samples)
  entropy = world_map.entropy()
  test_nll = float(test["nll"])
  zero = float(test["zero_density"])
  row = {
      "test_nll": test_nll,
      "kl_to_truth": probability.kl_to_truth(test_nll, entropy),
      "zero_density_fraction": zero,
      **yardstick.score_samples(samples),
      "num_params": experiment.num_params(trained.params, trained.model),
      "train_seconds": float(result.train_seconds),
      "validation_nll": float(val["nll"]),
  }
  if zero > 0:  # Say what the model does on the points it does not rule out.
    lp = trained.log_prob(data.test)
    finite = np.isfinite(lp)
    row["test_nll_on_support"] = float(-lp[finite].mean())
    row["kl_on_support"] = row["test_nll_on_support"] - entropy
  return row


def figures(name, trained, result, data, workdir) -> list[str]:
  """Density map, samples against data and (if trained) the NLL curve."""
  fig_dir = os.path.join(workdir, "figures")
  title = DISPLAY_NAMES.get(name, name)
  paths = [
      plotting.density_map(trained.log_prob, f"{fig_dir}/{name}_density.png",
                           title=f"{title}: model density"),
      plotting.samples_vs_data(trained.sample(jax.random.key(1), 5000), data.train,
                               f"{fig_dir}/{name}_samples.png",
                               title=f"{title}: data vs samples"),
  ]
  if any(r["split"] == "train" for r in result.history):
    paths.append(plotting.training_curves(
        result.history, f"{fig_dir}/{name}_training.png", keys=["nll"],
        title=f"{title}: NLL (nats)", hline=world_map.entropy(),
        hline_label="true entropy"))
  return [os.path.relpath(p, workdir) for p in paths]


def format_table(rows: dict[str, dict], entropy: float) -> str:
  """The ladder as a markdown table, from the box down."""
  lines = [f"True entropy of the data: {entropy:.4f} nats (log land area in deg²).",
           "",
           "| model | params | test NLL (nats) | KL to truth (nats) | zero-density test pts | land precision | binned KL 1° | recall 1° | train s |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for name, r in rows.items():
    kl = r["kl_to_truth"]
    kl_text = f"{kl:.3f}" if np.isfinite(kl) else (
        f"inf ({r['kl_on_support']:.3f} on support)" if "kl_on_support" in r else "inf")
    lines.append(
        f"| {DISPLAY_NAMES.get(name, name)} (`{name}`) | {r['num_params']:,} | "
        f"{r['test_nll']:.3f} | {kl_text} | "
        f"{100 * r['zero_density_fraction']:.3f}% | {r['land_precision']:.3f} | "
        f"{r['binned_kl_1deg']:.3f} | {r['land_recall_1deg']:.3f} | "
        f"{r['train_seconds']:.1f} |")
  return "\n".join(lines)


def summarize(config, data, rows, workdir, options, run) -> dict:
  """results.json's body; with figures on, report.md beside it."""
  del config, data
  results = {"entropy": world_map.entropy(), "land_area_deg2": world_map.land_area(),
             "models": {name: {k: v for k, v in r.items() if k != "figures"}
                        for name, r in rows.items()}}
  if options.figures:
    write_report(workdir, rows, run)
  return results


def write_report(workdir: str, rows: dict, run: dict) -> str:
  lines = ["# Density MLE on the world map", "",
           "Held-out NLL against the data's exact entropy: the gap is "
           "KL(p_data || p_model).", "",
           format_table(rows, world_map.entropy()), "", COLUMNS, "",
           f"Run: {provenance.describe(run)}.", ""]
  for name, r in rows.items():
    paths = r.get("figures", [])
    lines += [f"## {DISPLAY_NAMES.get(name, name)} (`{name}`)", ""]
    lines += [f"![{p}]({p})" for p in paths] + [""]
  path = os.path.join(workdir, "report.md")
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return path


def table(results: dict) -> str:
  return format_table(results["models"], results["entropy"])
