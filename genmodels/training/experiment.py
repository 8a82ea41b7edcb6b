"""One shape for every experiment, and the one function that runs it.

An *experiment* is a small bundle (see ``genmodels/density``, ``classify``,
``latent`` and ``nonlinearity``, each a folder with config.py, task.py and
report.py) that tells the engine:

* ``load_data(config)``: the data, once;
* ``tasks(config, data, options)``: the models to train, each a ``Task``
  (how to initialise, the loss, the evaluation, the data and how to report
  its results row), built one at a time;
* ``summarize(config, data, rows, workdir, options, run)``: results.json's
  body from the rows (figures and report.md as a side effect; ``run`` is the
  provenance record); ``table(results)``: what the entry point prints;
* ``unit_configs(config)`` and ``num_examples(config)``: what
  ``validate`` checks before the workdir is touched, plus an optional
  ``check(config)`` for the experiment's own fields.

``run(experiment, config, workdir)`` does everything else: the loop settings
from each task's ``train`` block, the optimizer from its ``optimizer`` block
(``optim.make``), training with resume and the non-finite guard
(``loop.train``), and the atomic results.json with the run's provenance.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Iterable, Protocol

import jax
import ml_collections
import numpy as np

from genmodels.errors import UsageError
from genmodels.training import loop
from genmodels.training import metrics as metrics_lib
from genmodels.training import optim
from genmodels.training import preemption
from genmodels.training import provenance
from genmodels.training import steps as steps_lib

# Every field of a ``train`` block; a block names only what differs.
# ``unit="epoch"`` counts log_every, eval_every and checkpoint_every in epochs.
TRAIN_DEFAULTS = dict(num_steps=0, epochs=0, batch_size=32, unit="step",
                      log_every=100, eval_every=0, checkpoint_every=1000,
                      eval_batch_size=4096, steps_per_dispatch=1)


def train_config(**overrides) -> ml_collections.ConfigDict:
  """A full ``train`` block: ``TRAIN_DEFAULTS`` with ``overrides``."""
  return optim.block("train", TRAIN_DEFAULTS, overrides)


def unit(model=None, *, train: dict | None = None, optimizer: dict | None = None,
         **fields) -> ml_collections.ConfigDict:
  """A trained unit's config: its ``model`` fields, ``train`` and ``optimizer`` blocks."""
  return ml_collections.ConfigDict(dict(
      model=dict(model or {}), train=train_config(**(train or {})),
      optimizer=optim.optimizer_config(**(optimizer or {})), **fields))


def variant(variants: dict[str, Callable[[], ml_collections.ConfigDict]],
            name: str, what: str) -> ml_collections.ConfigDict:
  """``variants[name]()``: a config file's ``get_config``, with a one-line error."""
  if name not in variants:
    valid = ", ".join(v or "(default)" for v in variants)
    raise UsageError(f"unknown {what} config variant {name!r}; valid: {valid}")
  return variants[name]()


@dataclasses.dataclass(frozen=True)
class Options:
  """How to run, not what: none of it changes the numbers (not in config.json)."""
  progress: bool = True
  figures: bool = True
  num_devices: int | None = None


@dataclasses.dataclass
class Task:
  """One model to train: what ``loop.train`` needs, plus how to report it.

  ``name`` None trains in the workdir itself (an experiment of one model);
  otherwise in ``workdir/models/NAME``. ``report(result, workdir)`` returns
  the model's results row (and may write figures); it runs on process 0 only.
  """
  name: str | None
  config: ml_collections.ConfigDict  # its ``train`` and ``optimizer`` blocks
  init: Callable[[jax.Array], dict]
  loss: steps_lib.LossFn
  train_data: dict[str, np.ndarray]
  eval_fn: Callable | None = None
  eval_data: dict[str, dict[str, np.ndarray]] | None = None
  report: Callable[[loop.TrainResult, str], dict] | None = None  # (result, workdir)
  # variables -> variables, once per evaluation before its batches (e.g. an
  # energy model's log Z, which every batch would otherwise recompute).
  eval_prepare: Callable[[dict], dict] | None = None


class Experiment(Protocol):
  def load_data(self, config): ...
  def tasks(self, config, data, options: Options) -> Iterable[Task]: ...
  def summarize(self, config, data, rows: dict, workdir: str,
                options: Options, run: dict) -> dict: ...
  def table(self, results: dict) -> str: ...
  def unit_configs(self, config) -> dict[str, ml_collections.ConfigDict]: ...
  def num_examples(self, config) -> int | None: ...


def loop_config(train_cfg, num_examples: int, seed: int, progress: bool = True,
                num_devices: int | None = None) -> loop.LoopConfig:
  """The loop's settings from a ``train`` block, for ``num_examples`` examples."""
  batch = int(train_cfg.batch_size)
  if batch <= 0:
    raise UsageError(f"batch_size must be positive, got {batch}")
  steps_per_epoch = num_examples // batch
  if (train_cfg.epochs or train_cfg.unit == "epoch") and steps_per_epoch == 0:
    raise UsageError(f"batch_size={batch} is larger than the {num_examples} "
                     f"training examples: lower batch_size")
  if train_cfg.unit not in ("step", "epoch"):
    raise UsageError(f"train.unit must be 'step' or 'epoch', got {train_cfg.unit!r}")
  scale = steps_per_epoch if train_cfg.unit == "epoch" else 1
  num_steps = (int(train_cfg.epochs) * steps_per_epoch if train_cfg.epochs
               else int(train_cfg.num_steps))
  return loop.LoopConfig(
      num_steps=num_steps, batch_size=batch, seed=int(seed),
      log_every=int(train_cfg.log_every) * scale,
      eval_every=int(train_cfg.eval_every) * scale,
      checkpoint_every=int(train_cfg.checkpoint_every) * scale,
      eval_batch_size=int(train_cfg.eval_batch_size),
      steps_per_dispatch=int(train_cfg.steps_per_dispatch),
      progress=progress, num_devices=num_devices)


# The most examples (or samples) any one size field may ask for: beyond it a
# run needs more memory than a workstation has, and int32 indices overflow.
MAX_COUNT = 10**8
# The share of the machine's memory the sizes asked for may take.
MEMORY_FRACTION = 0.8


def machine_memory_bytes() -> int | None:
  """This machine's memory (or its container's limit, if lower); None if unknown."""
  try:
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError, AttributeError):
    total = None
  for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
    try:
      with open(path) as f:
        limit = int(f.read().strip())
    except (OSError, ValueError):
      continue
    if limit > 0 and (total is None or limit < total):
      total = limit
  return total


def _gb(n: float) -> str:
  return f"{n / 1e9:.1f} GB"


def check_sizes(sizes: dict[str, tuple[Any, float]], limit: int = MAX_COUNT) -> None:
  """The size fields of a config against a bound and this machine's memory.

  ``sizes``: {field: (value, bytes one example costs at the run's peak)}.
  Each value must be a whole number in 1 .. ``limit``, and all of them
  together must fit in ``MEMORY_FRACTION`` of ``machine_memory_bytes`` (the
  estimate and the machine's memory are in the message). Raises UsageError
  before anything is loaded or written.
  """
  for key, (value, _) in sizes.items():
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
      raise UsageError(f"{key} must be a whole number, got {value!r}")
    if not 0 < value <= limit:
      if value <= 0:
        raise UsageError(f"{key} must be a positive number, got {value}")
      raise UsageError(f"{key}={value:,} is above the limit of {limit:,}: lower it")
  need = sum(float(value) * each for value, each in sizes.values())
  memory = machine_memory_bytes()
  if memory and need > MEMORY_FRACTION * memory:
    parts = ", ".join(f"{k}={v:,} at ~{each:g} bytes each" for k, (v, each)
                      in sizes.items())
    raise UsageError(
        f"the sizes asked for need about {_gb(need)} of memory ({parts}), more than "
        f"{MEMORY_FRACTION:.0%} of this machine's {_gb(memory)}: lower them")


def check_model(path: str, build: Callable[[], Any],
                trace: Callable[[Any], Any]) -> Any:
  """Builds a model from its config fields and traces its entry points (no compute).

  ``build()`` returns the module; ``trace(module)`` runs ``jax.eval_shape`` of
  its init and of every method training and the report call. Any failure
  (a zero width, a negative size, a bad activation name) is a UsageError
  naming the field ``path`` (e.g. "config.models.mlp.model"), before the
  workdir is touched or any model is trained. Returns the module.
  """
  try:
    model = build()
    trace(model)
  except UsageError as e:
    raise UsageError(f"{path}: {e}") from None
  except Exception as e:  # pylint: disable=broad-except
    first = (str(e).strip().splitlines() or [""])[0]
    raise UsageError(f"the model cannot be built from its fields ({path}): "
                     f"{type(e).__name__}: {first or 'no message'}") from None
  return model


def check_widths(path: str, fields: dict, names: Iterable[str]) -> None:
  """Each of ``names`` in ``fields`` (layer widths: an int or a sequence of ints)
  must be positive whole numbers; a UsageError names ``path.name``."""
  for name in names:
    if name not in fields or fields[name] is None:
      continue
    value = fields[name]
    widths = list(value) if isinstance(value, (tuple, list)) else [value]
    bad = [w for w in widths if isinstance(w, bool) or not isinstance(w, (int, np.integer))
           or w <= 0]
    if bad:
      shown = tuple(value) if isinstance(value, (tuple, list)) else value
      raise UsageError(f"{path}.{name} must be positive whole numbers (layer "
                       f"sizes), got {shown}")


def check_unit(name: str, cfg, num_examples: int | None, seed: int) -> None:
  """The checks of one unit's ``train`` and ``optimizer`` blocks, as one-line errors."""
  prefix = f"{name}: " if name else ""
  try:
    for key in ("num_steps", "epochs"):
      if not 0 <= cfg.train[key] < float("inf"):
        raise UsageError(f"train.{key} must be >= 0, got {cfg.train[key]}")
    optim.check(cfg.optimizer)
    lc = loop_config(cfg.train, num_examples or 2**62, seed)
    lc.validate(num_examples if num_examples is not None else lc.batch_size)
  except ValueError as e:
    raise UsageError(f"{prefix}{e}") from None


def validate(experiment: Experiment, config) -> None:
  """Every check of the config, before the workdir is touched (ValueError)."""
  if not 0 <= config.seed < 2**31:
    raise UsageError(f"seed must be in [0, 2**31), got {config.seed}")
  if hasattr(experiment, "check"):
    experiment.check(config)
  n = experiment.num_examples(config)
  for name, cfg in experiment.unit_configs(config).items():
    check_unit(name, cfg, n, config.seed)


def num_examples(data: dict[str, np.ndarray]) -> int:
  return len(next(iter(data.values())))


def _loop_args(task: Task, seed: int, options: Options) -> dict:
  lc = loop_config(task.config.train, num_examples(task.train_data), seed,
                   options.progress, options.num_devices)
  return dict(init_fn=task.init, loss_fn=task.loss,
              tx=optim.make(task.config.optimizer, lc.num_steps),
              train_data=task.train_data, config=lc)


def train(task: Task, workdir: str, seed: int, options: Options = Options(),
          on_eval=None) -> loop.TrainResult:
  """Trains one task with the shared loop from its ``train`` and ``optimizer`` blocks."""
  return loop.train(**_loop_args(task, seed, options), workdir=workdir,
                    eval_fn=task.eval_fn, eval_data=task.eval_data,
                    eval_prepare=task.eval_prepare, on_eval=on_eval)


def setup(task: Task, seed: int, options: Options = Options()) -> loop.Setup:
  """The state, data and jitted step that ``train`` would run: for benchmarks."""
  return loop.setup(**_loop_args(task, seed, options))


def model_dir(workdir: str, task: Task) -> str:
  return workdir if task.name is None else os.path.join(workdir, "models", task.name)


def only_row(config, data, rows, workdir, options, run) -> dict:
  """``summarize`` of an experiment of one model: its row is results.json."""
  del config, data, workdir, options, run
  return dict(rows[None])


def write_results(workdir: str, results: dict) -> str:
  """results.json, atomically (a kill mid-write keeps the previous file)."""
  return metrics_lib.write_json_atomic(os.path.join(workdir, "results.json"), results)


def run(experiment: Experiment, config, workdir: str,
        options: Options = Options(), data=None) -> dict[str, Any]:
  """Trains every task of ``experiment`` and writes results.json; returns it.

  ``data``: what ``experiment.load_data(config)`` returns, if the caller has
  loaded it already (the entry points do, before the workdir is touched).
  A multi-model experiment's results.json is rewritten after each model, so a
  stopped run keeps the rows it finished. Only process 0 writes.

  SIGTERM or SIGINT stops it (``preemption.Preempted``) in every long phase:
  training and its evaluations (``loop.train``), the reports (which check
  between their pieces), between models and before the figures; a re-run
  resumes each model from its checkpoint and redoes its report.
  """
  steal = provenance.StealMeter()
  t_start = time.perf_counter()
  main = jax.process_index() == 0
  if data is None:
    data = experiment.load_data(config)
  data_seconds = time.perf_counter() - t_start
  rows: dict = {}
  no_figures = dataclasses.replace(options, figures=False)
  for task in experiment.tasks(config, data, options):
    result = train(task, model_dir(workdir, task), config.seed, options)
    what = "the model" if task.name is None else f"model {task.name!r}"
    if main and task.report is not None:
      rows[task.name] = task.report(result, workdir)
    # Every process, after the report process 0 alone ran: they agree here.
    preemption.stop_if_requested(f"reporting {what}")
    if main and task.name is not None:  # the rows so far, for a stopped run
      record = provenance.run_record(steal)
      write_results(workdir, {**experiment.summarize(
          config, data, rows, workdir, no_figures, record), "run": record})
  preemption.stop_if_requested("writing the figures and results")
  if not main:
    return {}
  record = provenance.run_record(steal)
  # Process start to here: data, compilation, training, evaluations, figures.
  record.update(data_seconds=data_seconds,
                wall_seconds=time.perf_counter() - t_start)
  results = {**experiment.summarize(config, data, rows, workdir, options, record),
             "run": record}
  write_results(workdir, results)
  return results


def batched(fn: Callable, *arrays: np.ndarray, batch_size: int = 1024) -> np.ndarray:
  """``fn(*batches)`` over arrays with one leading size, in padded batches of one shape.

  Every call sees the same shape (the last batch is padded with copies of its
  first row and the padding cut from the output), so a jitted ``fn`` compiles
  once.
  """
  n = len(arrays[0])
  batch_size = max(1, min(batch_size, n))  # a small input is not padded to a whole batch
  out = []
  for start in range(0, n, batch_size):
    chunk = [np.asarray(a[start:start + batch_size]) for a in arrays]
    m = len(chunk[0])
    if m < batch_size:
      chunk = [np.concatenate([c, np.repeat(c[:1], batch_size - m, 0)]) for c in chunk]
    out.append(np.asarray(fn(*chunk))[:m])
  return np.concatenate(out)


def num_params(tree, model=None) -> int:
  """Parameters of a pytree; with a density ``model``, its ``num_free_params``
  (degrees of freedom)."""
  if model is not None:
    return int(model.num_free_params(tree))
  return int(sum(np.size(p) for p in jax.tree.leaves(tree)))
