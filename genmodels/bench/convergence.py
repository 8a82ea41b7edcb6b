"""Density flows trained as density_mle.py trains them, timed to a held-out KL."""

from __future__ import annotations

import sys
import tempfile

from genmodels import density
from genmodels import probability
from genmodels.data import world_map
from genmodels.density import config as density_config
from genmodels.training import experiment


def measure_convergence(names, target_kl: float, eval_every: int,
                        config=None) -> list[dict]:
  """Trains each density model of ``config`` (default: the default density config)
  with ``density.make_task`` and ``experiment.train``, evaluating every
  ``eval_every`` steps; returns a row per model with its KL curve."""
  config = config if config is not None else density_config.get_config()
  data = density.load_data(config)
  entropy = world_map.entropy()
  options = experiment.Options(progress=False, figures=False)
  rows = []
  for name in names:
    cfg = config.models[name].copy_and_resolve_references()
    cfg.train.eval_every = eval_every
    curve = []

    def on_eval(step, results, seconds, curve=curve, name=name):
      curve.append({"step": step, "train_seconds": seconds, **{
          f"{split}_kl": probability.kl_to_truth(float(m["nll"]), entropy)
          for split, m in results.items()}})
      print(f"  {name} step {step}: {seconds:.1f} s, validation KL "
            f"{curve[-1]['validation_kl']:.4f}", file=sys.stderr, flush=True)

    task = density.make_task(name, cfg, data, config.seed, options)
    with tempfile.TemporaryDirectory() as workdir:
      # Where experiment.run trains it: the report writes beside the checkpoints.
      result = experiment.train(task, experiment.model_dir(workdir, task), config.seed,
                                options, on_eval=on_eval)
      row = task.report(result, workdir)
    num_steps = int(cfg.train.num_steps)
    reached = next((c for c in curve if c["validation_kl"] <= target_kl), None)
    rows.append({
        "model": name, "num_params": row["num_params"], "num_steps": num_steps,
        "batch_size": int(cfg.train.batch_size),
        "steps_per_dispatch": int(cfg.train.steps_per_dispatch),
        "train_seconds": result.train_seconds,
        "steps_per_second": num_steps / result.train_seconds,
        "steady_steps_per_second": (  # From the first evaluation on: no compile.
            (curve[-1]["step"] - curve[0]["step"])
            / (curve[-1]["train_seconds"] - curve[0]["train_seconds"])
            if len(curve) > 1 else None),
        "target_kl": target_kl,
        "step_to_target": reached and reached["step"],
        "seconds_to_target": reached and reached["train_seconds"],
        "final_test_kl": row["kl_to_truth"], "final_land_precision": row["land_precision"],
        "curve": curve})
  return rows
