"""Density MLE on the world map: fit models by name, score them, load them back.

``fit_density`` trains one model with the shared loop and scores it against the
truth; ``run_ladder`` does that for several and writes ``results.json``;
``load_density`` gives back a trained model that anyone can score on their own
points. Each model lives in ``workdir/models/NAME/`` with its config, metrics,
checkpoints and final parameters.
"""

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from genmodels import models
from genmodels import probability
from genmodels.data import world_map
from genmodels.training import loop
from genmodels.training import metrics as metrics_lib
from genmodels.training import objectives

LADDER = ("box", "gaussian_diag", "gaussian_full", "gmm", "realnvp", "spline_flow")
SAMPLES_FOR_PRECISION = 20_000


def make_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam(W) with linear warm-up and cosine decay, with global-norm clipping."""
  steps = max(int(cfg.num_steps), 1)
  warmup = min(int(cfg.get("warmup_steps", 100)), steps // 2)
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, cfg.learning_rate, warmup, steps, end_value=cfg.learning_rate * 0.01)
  return optax.chain(optax.clip_by_global_norm(cfg.get("grad_clip", 1.0)),
                     optax.adamw(schedule, weight_decay=cfg.get("weight_decay", 0.0)))


class TrainedDensity:
  """A trained density model on (longitude, latitude) points in degrees."""

  def __init__(self, name: str, model, params):
    self.name, self.model, self.params = name, model, params
    self._log_prob = jax.jit(lambda p, x: model.apply({"params": p}, x,
                                                      method="log_prob"))
    self._sample = jax.jit(lambda p, k, n: model.apply({"params": p}, k, n,
                                                       method="sample"),
                           static_argnums=2)

  def log_prob(self, x) -> np.ndarray:
    """log p(x) for points [N, 2] or a single point [2]; -inf where p is 0."""
    x = np.asarray(x, dtype=np.float32)
    single = x.ndim == 1
    x = x[None] if single else x
    if x.ndim != 2 or x.shape[-1] != 2:
      raise ValueError(f"points must have shape [N, 2] as (longitude, latitude) "
                       f"in degrees, got {tuple(np.shape(x))}")
    out = np.asarray(self._log_prob(self.params, jnp.asarray(x)))
    return out[0] if single else out

  def sample(self, key: jax.Array, n: int) -> np.ndarray:
    """n points [n, 2] in degrees."""
    if int(n) <= 0:
      raise ValueError(f"n must be positive, got {n}")
    return np.asarray(self._sample(self.params, key, int(n)))


def num_params(model, params) -> int:
  """The model's degrees of freedom (``num_free_params`` where it has unused entries)."""
  if hasattr(model, "num_free_params"):
    return int(model.num_free_params(params))
  return int(sum(np.size(p) for p in jax.tree.leaves(params)))


def _loop_config(cfg, seed, progress) -> loop.LoopConfig:
  return loop.LoopConfig(
      num_steps=int(cfg.num_steps), batch_size=int(cfg.batch_size), seed=seed,
      log_every=int(cfg.log_every), eval_every=int(cfg.eval_every),
      eval_batch_size=int(cfg.eval_batch_size),
      checkpoint_every=int(cfg.checkpoint_every),
      steps_per_dispatch=int(cfg.steps_per_dispatch), progress=progress,
      num_devices=cfg.get("num_devices", None))


def fit_density(name: str, cfg: ml_collections.ConfigDict,
                data: world_map.WorldMapData, workdir: str, seed: int = 0,
                progress: bool = True, on_eval=None,
                ) -> tuple[dict[str, Any], "TrainedDensity", loop.TrainResult]:
  """Fits model ``name`` by maximum likelihood and scores it against the truth.

  ``cfg`` holds ``model`` (the module's attributes) and the training knobs
  (num_steps, batch_size, learning_rate, ...). num_steps=0 keeps the
  closed-form initialisation (box, Gaussians). ``on_eval`` is passed to
  ``loop.train``. Returns (the model's row of ``results.json``, the
  ``TrainedDensity``, the loop's ``TrainResult``).
  """
  model_dir = os.path.join(workdir, "models", name)
  os.makedirs(model_dir, exist_ok=True)
  model = models.get_density_model(name, **cfg.model.to_dict())
  train_x = jnp.asarray(data.train)
  result = loop.train(
      init_fn=lambda k: jax.jit(model.init, static_argnames="method")(
          k, train_x, method="log_prob"),
      loss_fn=objectives.density_loss(model),
      tx=make_optimizer(cfg),
      train_data={"x": data.train},
      config=_loop_config(cfg, seed, progress),
      workdir=model_dir,
      eval_fn=objectives.density_eval(model),
      eval_data={"validation": {"x": data.validation}, "test": {"x": data.test}},
      on_eval=on_eval)
  params = result.state.params
  trained = TrainedDensity(name, model, params)
  _save_model(model_dir, name, cfg, params)

  test, val = result.last("test"), result.last("validation")
  samples = trained.sample(jax.random.key(seed + 1), SAMPLES_FOR_PRECISION)
  entropy = world_map.entropy()
  test_nll = float(test["nll"])
  zero = float(test["zero_density"])
  row = {
      "test_nll": test_nll,
      "kl_to_truth": probability.kl_to_truth(test_nll, entropy),
      "zero_density_fraction": zero,
      "land_precision": float(world_map.on_land(samples).mean()),
      "num_params": num_params(model, params),
      "train_seconds": float(result.train_seconds),
      "validation_nll": float(val["nll"]),
      "num_steps": int(cfg.num_steps),
  }
  if zero > 0:  # Say what the model does on the points it does not rule out.
    lp = trained.log_prob(data.test)
    finite = np.isfinite(lp)
    row["test_nll_on_support"] = float(-lp[finite].mean())
    row["kl_on_support"] = row["test_nll_on_support"] - entropy
  return row, trained, result


def _save_model(model_dir, name, cfg, params):
  with open(os.path.join(model_dir, "model.json"), "w") as f:
    json.dump({"name": name, "model": cfg.model.to_dict()}, f, indent=2)
  path = os.path.join(os.path.abspath(model_dir), "params")
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(path, params, force=True)
  ckptr.wait_until_finished()


def load_density(workdir: str, name: str | None = None) -> TrainedDensity:
  """A trained model from a density_mle workdir: ``name``, or the best one.

  The best is the lowest validation NLL in ``results.json``.
  """
  if name is None:
    results_path = os.path.join(workdir, "results.json")
    if not os.path.exists(results_path):
      raise FileNotFoundError(f"no results.json in {workdir}: run "
                              f"experiments/density_mle.py --workdir={workdir} first")
    with open(results_path) as f:
      rows = json.load(f)["models"]
    name = min(rows, key=lambda n: float(rows[n]["validation_nll"]))
  model_dir = os.path.join(workdir, "models", name)
  if not os.path.exists(os.path.join(model_dir, "model.json")):
    raise FileNotFoundError(f"no trained model {name!r} in {workdir}/models")
  with open(os.path.join(model_dir, "model.json")) as f:
    spec = json.load(f)
  model = models.get_density_model(spec["name"], **spec["model"])
  abstract = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((4, 2)), method="log_prob"))
  params = ocp.StandardCheckpointer().restore(
      os.path.join(os.path.abspath(model_dir), "params"), abstract["params"])
  return TrainedDensity(spec["name"], model, params)


def write_results(workdir: str, rows: dict[str, dict], run: dict | None = None) -> str:
  """results.json: the truth's entropy, a row per model and the run's provenance."""
  out = {"entropy": world_map.entropy(), "land_area_deg2": world_map.land_area(),
         "models": rows}
  if run is not None:
    out["run"] = run
  return metrics_lib.write_json_atomic(os.path.join(workdir, "results.json"), out)


def format_table(rows: dict[str, dict], entropy: float) -> str:
  """The ladder as a markdown table, from the box down."""
  lines = [f"True entropy of the data: {entropy:.4f} nats (log land area in deg²).",
           "",
           "| model | params | test NLL (nats) | KL to truth (nats) | zero-density test pts | land precision | train s |",
           "|---|---:|---:|---:|---:|---:|---:|"]
  for name, r in rows.items():
    kl = r["kl_to_truth"]
    kl_text = f"{kl:.3f}" if np.isfinite(kl) else (
        f"inf ({r['kl_on_support']:.3f} on support)" if "kl_on_support" in r else "inf")
    lines.append(
        f"| {name} | {r['num_params']:,} | {r['test_nll']:.3f} | {kl_text} | "
        f"{100 * r['zero_density_fraction']:.3f}% | {r['land_precision']:.3f} | "
        f"{r['train_seconds']:.1f} |")
  return "\n".join(lines)
