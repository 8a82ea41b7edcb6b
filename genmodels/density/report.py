"""The density experiment's report: each model scored against the truth, a table, figures.

``score`` is the one world-map scoring every density-like model gets: held-out
NLL minus the data's exact entropy is KL(p_data || p_model), plus the share of
test points the model rules out and the land precision of its samples.
"""

import os

import jax
import numpy as np

from genmodels import models
from genmodels import plotting
from genmodels import probability
from genmodels.density import yardstick
from genmodels.data import world_map
from genmodels.training import experiment
from genmodels.training import preemption
from genmodels.training import provenance

SAMPLE_CHUNK = 100_000  # samples drawn per call: bounds the memory of a flow's inverse

# Chapter 1's taxonomy: how each model treats the density (its card's branch).
BRANCH_TITLES = {"tractable": "tractable density", "approximate": "approximate density",
                 "implicit": "implicit density"}
IWAE_CHECK_POINTS = 10_000  # validation points for a bound's "double K" check


def branch(name: str) -> str:
  """The model's branch of chapter 1's taxonomy, from its card."""
  return models.card(name).branch


def display_name(name: str) -> str:
  return models.card(name).display


class ImpossibleResult(RuntimeError):
  """A score no correct model can reach (a KL below zero): a bug in the model."""


def check_kl(name: str, kl: float, standard_error: float) -> None:
  """Fails where the held-out KL is below zero by more than its noise.

  The data are uniform on land, so KL-hat = mean(-log q(x)) - H over the test
  points, with standard error std(-log q) / sqrt(N): a perfect model has
  -log q constant and KL-hat exactly 0. Below -(4 SE + 1e-3) the model's
  density does not integrate to one (a forgotten log-determinant, say).
  """
  if np.isfinite(kl) and kl < -(4 * standard_error + 1e-3):
    raise ImpossibleResult(
        f"model {name!r}: held-out KL to the truth is {kl:.4f} nats (standard error "
        f"{standard_error:.4f}), below zero, which no normalised density can reach: "
        f"its log_prob does not integrate to one (check its log-determinant or "
        f"normaliser)")


COLUMNS = """\
Columns: *density*, the model's branch of chapter 1's taxonomy (tractable,
approximate or implicit); *params*, the model's degrees of freedom; *test NLL*,
the mean negative log-density of the held-out points (nats, degrees²); *KL to
truth*, test NLL minus the data's exact entropy, which is KL(p_data ‖ p_model)
(inf if the model gives some test point density 0: then the KL on the points it
covers is shown; "≤" where log_prob is a lower bound on log p, the VAE's
importance-weighted bound, so the true KL is at most that; none for a model
that only samples, the GAN, which the yardstick alone scores);
*zero-density test pts*, the share of such points; *land precision*, the share of
the model's samples that fall on land; *binned KL 1°*, the sample yardstick:
KL from the data's exact distribution over 1° cells to the histogram of the
model's samples (add-1/2 smoothing), with in brackets its floor, what a
perfect sampler scores with as many samples (``yardstick.yardstick_floor``;
it falls like 1/N, so compare models by their distance above it), and
*recall 1°*, the share of the data's mass in cells the samples reach
(``genmodels/yardstick.py``; results.json also has 4° and 0.25° and the
recall per continent); *samples*, how many the yardstick used (fewer for the
models whose samples cost a chain each); *train s*, training seconds
(evaluations excluded)."""


def draw(trained, key, n: int) -> np.ndarray:
  """n samples [n, 2], drawn in chunks of ``SAMPLE_CHUNK``; a stop request
  (SIGTERM, SIGINT) raises ``preemption.Preempted`` between chunks."""
  chunks = []
  for i, start in enumerate(range(0, n, SAMPLE_CHUNK)):
    preemption.stop_if_requested(f"sampling model {trained.name!r}", local=True)
    chunks.append(trained.sample(jax.random.fold_in(key, i),
                                 min(SAMPLE_CHUNK, n - start)))
  return np.concatenate(chunks)


def score(trained, data: world_map.WorldMapData, result, samples) -> dict:
  """A density model's results row: the loop's last evaluation, then its samples.

  Held-out NLL and KL to the truth from the model's density (an upper bound
  on the KL where its log_prob is a lower bound, the VAE's; none for an
  implicit model); land precision, recall and binned KLs from ``samples``
  (``yardstick``). A stop request raises ``preemption.Preempted`` between its
  parts, and within the yardstick's long numpy passes.
  """
  phase = f"scoring model {trained.name!r}"
  stoppable = lambda fn, *args: preemption.run_stoppable(fn, *args, phase=phase)
  entropy = world_map.entropy()
  row: dict = {"test_nll": None, "kl_to_truth": None, "zero_density_fraction": None,
               **stoppable(yardstick.score_samples, samples),
               "num_params": experiment.num_params(trained.params, trained.model),
               "train_seconds": float(result.train_seconds), "validation_nll": None}
  # A perfect sampler's score at the same N: the column's zero (it falls like 1/N).
  row["binned_kl_1deg_floor"] = stoppable(yardstick.yardstick_floor,
                                          len(samples), 1.0).mean
  preemption.stop_if_requested(phase, local=True)
  if not trained.has_density:
    return row
  test, val = result.last("test"), result.last("validation")
  test_nll = float(test["nll"])
  zero = float(test["zero_density"])
  row.update(test_nll=test_nll, kl_to_truth=probability.kl_to_truth(test_nll, entropy),
             zero_density_fraction=zero, validation_nll=float(val["nll"]))
  if "nll_sq" in test and zero == 0:
    var = max(float(test["nll_sq"]) - test_nll ** 2, 0.0)
    check_kl(trained.name, row["kl_to_truth"], np.sqrt(var / len(data.test)))
  if trained.model.log_prob_is_bound:
    row["kl_is_upper_bound"] = True
  for key in sorted(set(test) - {"nll", "nll_sq", "zero_density", "step", "split"}):
    if key.endswith("_nll"):  # another bound's NLL: its KL to the truth too
      row[f"test_{key}"] = float(test[key])
      row[f"{key[:-4]}_kl_to_truth"] = float(test[key]) - entropy
  row.update(trained.diagnostics(data.validation[:IWAE_CHECK_POINTS]))
  preemption.stop_if_requested(phase, local=True)
  if zero > 0:  # Say what the model does on the points it does not rule out.
    lp = trained.log_prob(data.test)
    finite = np.isfinite(lp)
    row["test_nll_on_support"] = float(-lp[finite].mean())
    row["kl_on_support"] = row["test_nll_on_support"] - entropy
    preemption.stop_if_requested(phase, local=True)  # before the figures
  return row


def figures(name, trained, result, data, workdir, samples,
            cells_per_degree: int = 2) -> list[str]:
  """Density map (sample histogram for an implicit model), samples against data,
  the NLL curve if trained; the grid and samples also go to ``NAME_map.npz``
  for the taxonomy figure."""
  fig_dir = os.path.join(workdir, "figures")
  title = display_name(name)
  if trained.has_density:
    grid = plotting.density_grid(trained.log_prob, cells_per_degree)
    what = "model density"
  else:
    grid = plotting.density_grid(yardstick.histogram_log_density(samples, 1.0), 1)
    what = f"histogram of {len(samples):,} samples (1° cells)"
  os.makedirs(fig_dir, exist_ok=True)
  np.savez_compressed(os.path.join(fig_dir, f"{name}_map.npz"),
                      density=grid.astype(np.float32), samples=samples[:5000],
                      what=what)
  paths = [
      plotting.density_map(None, f"{fig_dir}/{name}_density.png",
                           title=f"{title}: {what}", grid=grid),
      plotting.samples_vs_data(samples[:5000], data.train,
                               f"{fig_dir}/{name}_samples.png",
                               title=f"{title}: data vs samples"),
  ]
  train_rows = [r for r in result.history if r["split"] == "train"]
  if any("nll" in r for r in train_rows):
    paths.append(plotting.training_curves(
        result.history, f"{fig_dir}/{name}_training.png", keys=["nll"],
        title=f"{title}: NLL (nats)", hline=world_map.entropy(),
        hline_label="true entropy"))
  elif any("loss" in r for r in train_rows):  # its own training loss
    paths.append(plotting.training_curves(
        result.history, f"{fig_dir}/{name}_training.png", keys=["loss"],
        title=f"{title}: training loss"))
  return [os.path.relpath(p, workdir) for p in paths]


def taxonomy_figure(workdir: str, names) -> str | None:
  """figures/taxonomy.png from the models' saved maps, grouped by branch."""
  fig_dir = os.path.join(workdir, "figures")
  branches = []
  for b in models.BRANCHES:
    panels = []
    for name in names:
      path = os.path.join(fig_dir, f"{name}_map.npz")
      if branch(name) == b and os.path.exists(path):
        with np.load(path) as z:
          card = models.card(name)
          panels.append((f"{card.display} · {card.family_label}\n{z['what']}",
                         z["density"], z["samples"]))
    if panels:
      branches.append((BRANCH_TITLES[b], panels))
  if not branches:
    return None
  return plotting.taxonomy_map(branches, os.path.join(fig_dir, "taxonomy.png"),
                               title="Chapter 1's taxonomy on the world map")


def _kl_text(r: dict) -> str:
  kl = r["kl_to_truth"]
  if kl is None:
    return "— (samples only)"
  if r.get("kl_is_upper_bound"):
    return f"≤ {kl:.3f} (bound)"
  if np.isfinite(kl):
    return f"{kl:.3f}"
  return f"inf ({r['kl_on_support']:.3f} on support)" if "kl_on_support" in r else "inf"


def _num(value, fmt: str) -> str:
  return "—" if value is None else format(value, fmt)


def format_table(rows: dict[str, dict], entropy: float) -> str:
  """The models as a markdown table, in order, each with its branch of chapter 1's taxonomy."""
  lines = [f"True entropy of the data: {entropy:.4f} nats (log land area in deg²).",
           "",
           "| density | model | params | test NLL (nats) | KL to truth (nats) | zero-density test pts | land precision | binned KL 1° (floor) | recall 1° | samples | train s |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for name, r in rows.items():
    zero = r["zero_density_fraction"]
    lines.append(
        f"| {branch(name)} | {display_name(name)} (`{name}`) | "
        f"{r['num_params']:,} | {_num(r['test_nll'], '.3f')} | {_kl_text(r)} | "
        f"{'—' if zero is None else f'{100 * zero:.3f}%'} | {r['land_precision']:.3f} | "
        f"{r['binned_kl_1deg']:.3f} ({r['binned_kl_1deg_floor']:.3f}) | "
        f"{r['land_recall_1deg']:.3f} | {int(r['num_samples']):,} | "
        f"{r['train_seconds']:.1f} |")
  return "\n".join(lines)


def summarize(config, data, rows, workdir, options, run) -> dict:
  """results.json's body; with figures on, report.md beside it."""
  del config, data
  results = {"entropy": world_map.entropy(), "land_area_deg2": world_map.land_area(),
             "models": {name: {k: v for k, v in r.items() if k != "figures"}
                        for name, r in rows.items()}}
  if options.figures:
    if len(rows) > 1:
      taxonomy_figure(workdir, list(rows))
    write_report(workdir, rows, run)
  return results


def write_report(workdir: str, rows: dict, run: dict) -> str:
  lines = ["# Density MLE on the world map", "",
           "Held-out NLL against the data's exact entropy: the gap is "
           "KL(p_data || p_model).", "",
           format_table(rows, world_map.entropy()), "", COLUMNS, "",
           f"Run: {provenance.describe(run)}.", ""]
  if os.path.exists(os.path.join(workdir, "figures", "taxonomy.png")):
    lines += ["![every model](figures/taxonomy.png)", ""]
  for name, r in rows.items():
    paths = r.get("figures", [])
    card = models.card(name)
    lines += [f"## {card.display} (`{name}`): {card.branch} density, "
              f"{card.family_label}", ""]
    lines += [f"![{p}]({p})" for p in paths] + [""]
  path = os.path.join(workdir, "report.md")
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return path


def table(results: dict) -> str:
  return format_table(results["models"], results["entropy"])
