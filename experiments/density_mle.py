r"""Density MLE on the world map: chapter 1's generative hello world.

  python experiments/density_mle.py --workdir=/tmp/density            # the ladder
  python experiments/density_mle.py --workdir=/tmp/flow --model=spline_flow
  python experiments/density_mle.py --workdir=/tmp/few --num_train=1000

Writes results.json, report.md, figures/*.png and, per model, models/NAME/
(config, metrics.jsonl, TensorBoard events, Orbax checkpoints, final params).
Run the same command again to resume an interrupted run.
"""

import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from genmodels import cli  # pylint: disable=g-import-not-at-top
from genmodels import density_mle
from genmodels import models
from genmodels import plotting
from genmodels.data import world_map
from genmodels.training import distributed
from genmodels.training import provenance

_CONFIG = cli.define_config_file(
    "config", os.path.join(os.path.dirname(__file__), "configs", "density_mle.py"),
    "ml_collections config file (optionally :variant).", lock_config=True)
_MODEL = flags.DEFINE_string(
    "model", "ladder",
    f"Model name, comma-separated names, or 'ladder' for all in order: "
    f"{', '.join(density_mle.LADDER)}.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for the run's outputs.")
_SEED = flags.DEFINE_integer("seed", None, "Seed for data and training (config: 0).")
_NUM_TRAIN = flags.DEFINE_integer("num_train", None, "Training points (config: 100000).")
_NUM_STEPS = flags.DEFINE_integer("num_steps", None, "Steps for gradient-trained models.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Batch size of gradient-trained models.")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", None, "Peak learning rate.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Delete a different run in --workdir.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")
_FIGURES = flags.DEFINE_bool("figures", True, "Write PNG figures and report.md.")
_NUM_DEVICES = flags.DEFINE_integer(
    "num_devices", None, "Data-parallel width: devices in the mesh, over all "
    "processes (default: all).", lower_bound=1)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Multi-process: host:port of process 0 "
    "(with --num_processes and --process_id; all share --workdir).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process: "
                                      "number of processes.", lower_bound=1)
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process: this "
                                   "process's rank, 0..num_processes-1.",
                                   lower_bound=0)


def resolve_config():
  """The config with flag overrides applied, and the models to run."""
  names = (list(density_mle.LADDER) if _MODEL.value == "ladder"
           else [n.strip() for n in _MODEL.value.split(",") if n.strip()])
  if not names:
    raise cli.UsageError("--model names no model; valid: ladder, "
                         f"{', '.join(models.DENSITY_MODELS)}")
  for name in names:
    if name not in models.DENSITY_MODELS:
      raise cli.UsageError(f"unknown --model {name!r}; valid: ladder, "
                           f"{', '.join(models.DENSITY_MODELS)}")
  config = _CONFIG.value
  if _SEED.value is not None:
    config.seed = _SEED.value
  if _NUM_TRAIN.value is not None:
    config.num_train = _NUM_TRAIN.value
  for flag, key in ((_NUM_STEPS, "num_steps"), (_BATCH_SIZE, "batch_size"),
                    (_LEARNING_RATE, "learning_rate")):
    if flag.value is not None:
      cli.check_positive(f"--{key}", flag.value)
  if not 0 <= config.seed < 2**31:
    raise cli.UsageError(f"--seed must be in [0, 2**31), got {config.seed}")
  for key in ("num_train", "num_validation", "num_test"):
    cli.check_positive(key, config[key])
  for name in names:
    m = config.models[name]
    if m.num_steps:  # Closed-form models take no training knobs.
      for flag, key in ((_NUM_STEPS, "num_steps"), (_BATCH_SIZE, "batch_size"),
                        (_LEARNING_RATE, "learning_rate")):
        if flag.value is not None:
          m[key] = flag.value
      if m.batch_size > config.num_train:
        raise cli.UsageError(
            f"batch size {m.batch_size} of {name} is larger than the "
            f"{config.num_train} training points: lower --batch_size")
      for key in ("learning_rate", "grad_clip"):
        cli.check_positive(f"{name}: {key}", m[key])
      if m.warmup_steps < 0:
        raise cli.UsageError(f"{name}: warmup_steps must be >= 0, got {m.warmup_steps}")
    try:  # The loop's own checks, before the workdir is written.
      loop_config = density_mle._loop_config(m, config.seed, False)  # pylint: disable=protected-access
      loop_config.validate(config.num_train)
    except ValueError as e:
      raise cli.UsageError(f"{name}: {e}") from e
  return config, names


def write_figures(workdir, name, trained, result, data):
  fig_dir = os.path.join(workdir, "figures")
  paths = [
      plotting.density_map(trained.log_prob, f"{fig_dir}/{name}_density.png",
                           title=f"{name}: model density"),
      plotting.samples_vs_data(trained.sample(_key(1), 5000), data.train,
                               f"{fig_dir}/{name}_samples.png",
                               title=f"{name}: data vs samples"),
  ]
  if any(r["split"] == "train" for r in result.history):
    paths.append(plotting.training_curves(
        result.history, f"{fig_dir}/{name}_training.png", keys=["nll"],
        title=f"{name}: NLL (nats)", hline=world_map.entropy(),
        hline_label="true entropy"))
  return [os.path.relpath(p, workdir) for p in paths]


def _key(i):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.random.key(i)


def write_report(workdir, rows, figures):
  table = density_mle.format_table(rows, world_map.entropy())
  lines = ["# Density MLE on the world map", "",
           "Held-out NLL against the data's exact entropy: the gap is "
           "KL(p_data || p_model).", "", table, ""]
  for name, paths in figures.items():
    lines += [f"## {name}", ""] + [f"![{p}]({p})" for p in paths] + [""]
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write("\n".join(lines))
  return table


@cli.one_line_errors
def main(argv):
  if len(argv) > 1:
    raise cli.UsageError(f"unexpected arguments {argv[1:]}: pass options as --flags")
  # Before anything touches a device: join the other processes, if any.
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  steal = provenance.StealMeter()
  config, names = resolve_config()
  workdir = distributed.main_process_first(lambda: cli.prepare_workdir(
      _WORKDIR.value, {"config": config.to_dict(), "models": names},
      overwrite=_OVERWRITE.value, lock=distributed.is_main_process()))
  if _NUM_DEVICES.value:  # After config.json: a run may resume on other devices.
    for name in names:
      with config.models[name].unlocked():
        config.models[name].num_devices = _NUM_DEVICES.value
  main_process = distributed.is_main_process()  # writes results, report, figures
  data = world_map.load(config.num_train, config.num_validation, config.num_test,
                        seed=config.seed)
  rows, figures = {}, {}
  for name in names:
    print(f"== {name}", file=sys.stderr)
    row, trained, result = density_mle.fit_density(
        name, config.models[name], data, workdir, seed=config.seed,
        progress=_PROGRESS.value)
    rows[name] = row
    if main_process:
      density_mle.write_results(workdir, rows, provenance.run_record(steal))
    if _FIGURES.value and main_process:
      figures[name] = write_figures(workdir, name, trained, result, data)
  table = (write_report(workdir, rows, figures) if main_process
           else density_mle.format_table(rows, world_map.entropy()))
  print(table)
  print(f"\nresults: {os.path.join(workdir, 'results.json')}")


if __name__ == "__main__":
  cli.run(main)
