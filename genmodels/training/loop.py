"""The one training loop every experiment uses.

``train`` takes an init function, a loss, an Optax optimizer and arrays of data,
and does the rest: restores the newest checkpoint of an interrupted run, keeps
the dataset on device and sends only batch indices, runs jit-compiled steps
(several per dispatch with ``lax.scan`` if asked), shards the batch over all
devices, stops at the first non-finite loss or gradient, evaluates, writes
metrics and checkpoints, and shows a progress bar.

Stops: SIGTERM or SIGINT (``preemption``) stops at the next step boundary
with a checkpoint, between the batches of an evaluation (a stop during an
evaluation in the middle of training saves the step it evaluates; the final
evaluation comes after the final checkpoint). A stop asked for before
``train`` is called stops at its first step boundary.
The training seconds are kept beside the checkpoints (``train_seconds.json``),
so a resumed run reports the time of the whole training, not of its last
session.

Determinism: the batch order comes from (seed, epoch) and every random key from
(seed, step), so a resumed run replays exactly what an uninterrupted one does.

Multi-process (after ``distributed.initialize``): every process runs this same
loop on the same data; each sends only its own slice of every batch's indices,
process 0 alone writes metrics, and Orbax writes one checkpoint from all.
"""

import dataclasses
import json
import os
import sys
import time
from typing import Any, Callable

from absl import logging
import jax
import numpy as np
import optax
import tqdm

from genmodels.errors import UsageError
from genmodels.training import checkpoint as checkpoint_lib
from genmodels.training import metrics as metrics_lib
from genmodels.training import preemption
from genmodels.training import sharding
from genmodels.training import steps as steps_lib


class NonFiniteError(RuntimeError):
  """A loss or gradient became NaN or infinite; the state before it is kept."""


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  num_steps: int
  batch_size: int
  seed: int = 0
  log_every: int = 100
  eval_every: int = 0  # 0: evaluate at the end only.
  eval_batch_size: int = 4096
  checkpoint_every: int = 1000  # 0: only at the end.
  steps_per_dispatch: int = 1
  progress: bool = True
  num_devices: int | None = None  # None: all devices.

  def validate(self, num_examples: int):
    positive = ("batch_size", "log_every", "eval_batch_size", "steps_per_dispatch")
    for name in positive:
      if getattr(self, name) <= 0:
        raise UsageError(f"{name} must be positive, got {getattr(self, name)}")
    for name in ("num_steps", "eval_every", "checkpoint_every"):
      if getattr(self, name) < 0:
        raise UsageError(f"{name} must be >= 0, got {getattr(self, name)}")
    if self.num_steps and self.batch_size > num_examples:
      raise UsageError(f"batch_size={self.batch_size} is larger than the "
                       f"{num_examples} training examples: lower batch_size")
    if self.checkpoint_every % self.log_every:
      raise UsageError(f"checkpoint_every={self.checkpoint_every} must be a "
                       f"multiple of log_every={self.log_every}")


class EpochSampler:
  """Batch indices for step s: epoch s // steps_per_epoch, shuffled from (seed, epoch)."""

  def __init__(self, num_examples: int, batch_size: int, seed: int):
    self.num_examples, self.batch_size, self.seed = num_examples, batch_size, seed
    self.steps_per_epoch = num_examples // batch_size
    self._cache: dict[int, np.ndarray] = {}

  def permutation(self, epoch: int) -> np.ndarray:
    if epoch not in self._cache:
      self._cache = {epoch: np.random.default_rng([self.seed, epoch]).permutation(
          self.num_examples).astype(np.int32)}
    return self._cache[epoch]

  def indices(self, step: int, count: int = 1) -> np.ndarray:
    """[count, batch_size] int32 indices for steps step .. step + count - 1."""
    out = np.empty((count, self.batch_size), np.int32)
    for i in range(count):
      epoch, pos = divmod(step + i, self.steps_per_epoch)
      out[i] = self.permutation(epoch)[pos * self.batch_size:(pos + 1) * self.batch_size]
    return out


@dataclasses.dataclass
class TrainResult:
  state: steps_lib.TrainState
  history: list[dict]
  train_seconds: float
  resumed_from: int  # 0 for a fresh run.

  def last(self, split: str) -> dict:
    return next((r for r in reversed(self.history) if r["split"] == split), {})


def evaluate(eval_step: Callable, variables: Any, data: dict[str, np.ndarray],
             batch_size: int, mesh=None, phase: str = "evaluating") -> dict[str, float]:
  """Means of per-example metrics over a whole split (padded last batch, masked).

  A stop request (``preemption``) raises ``Preempted`` between batches, with
  ``phase`` saying what was running; all processes agree on the batch.
  """
  n = len(next(iter(data.values())))
  batch_size = min(batch_size, n)  # a small split is not padded to a whole batch
  if mesh is not None:  # Batches must split evenly over the devices.
    batch_size = -(-batch_size // mesh.size) * mesh.size
  sums: dict[str, float] = {}
  for start in range(0, n, batch_size):
    preemption.stop_if_requested(phase)
    batch = {k: v[start:start + batch_size] for k, v in data.items()}
    m = len(next(iter(batch.values())))
    mask = np.arange(batch_size) < m
    batch = {k: np.concatenate([v, np.repeat(v[:1], batch_size - m, 0)])
             for k, v in batch.items()}
    if mesh is not None:  # (every process holds the whole split: see sharding.put)
      batch, mask = sharding.put((batch, mask), sharding.batch_sharded(mesh))
    out = jax.device_get(eval_step(variables, batch, mask))
    for k, v in out.items():
      sums[k] = sums.get(k, 0.0) + float(v)
  return {k: v / n for k, v in sums.items()}


class _MemoryWriter:
  """The records of a MetricWriter, without files: for processes other than 0."""

  def __init__(self):
    self.records: list[dict] = []

  def write(self, step: int, split: str, metrics: dict):
    record = {"step": int(step), "split": split, **metrics_lib.to_python(metrics)}
    self.records = [r for r in self.records  # a rewritten (step, split) replaces
                    if (r["step"], r["split"]) != (record["step"], split)]
    self.records.append(record)

  def close(self):
    pass


_WINDOW_FILE = "preempted_window.json"


def _save_window(workdir: str, step: int, window: list[dict]):
  """The train metrics of a log window cut short by preemption, to finish it on resume."""
  record = {"step": step, "window": [
      {k: [float(v), np.asarray(v).dtype.str] for k, v in w.items()} for w in window]}
  metrics_lib.write_json_atomic(os.path.join(workdir, _WINDOW_FILE), record)


def _load_window(workdir: str, start: int) -> list[dict]:
  path = os.path.join(workdir, _WINDOW_FILE)
  try:
    with open(path) as f:
      record = json.load(f)
  except (OSError, ValueError):
    return []
  if record.get("step") != start:  # stale: resumed from another checkpoint
    return []
  return [{k: np.dtype(dtype).type(v)
           for k, (v, dtype) in w.items()} for w in record["window"]]


_TIME_FILE = "train_seconds.json"


def _load_train_seconds(workdir: str) -> dict[int, float]:
  """{checkpointed step: training seconds up to it} of the earlier sessions."""
  try:
    with open(os.path.join(workdir, _TIME_FILE)) as f:
      return {int(k): float(v) for k, v in json.load(f).items()}
  except (OSError, ValueError, TypeError, AttributeError):
    return {}


def _save_train_seconds(workdir: str, seconds: dict[int, float]) -> None:
  metrics_lib.write_json_atomic(os.path.join(workdir, _TIME_FILE),
                                {str(k): v for k, v in sorted(seconds.items())})


def _first_bad(metrics: dict) -> tuple[int, str] | None:
  finite = np.asarray(metrics["finite"])
  if finite.all():
    return None
  j = int(np.argmin(finite))
  if not np.isfinite(metrics["loss"][j]):
    quantity = "loss"
  elif not np.isfinite(metrics["grad_norm"][j]):
    quantity = "gradient norm"
  else:
    quantity = "parameters after the update"
  return j, quantity


@dataclasses.dataclass
class Setup:
  """Everything a run's steps need, built once: what ``train`` runs and a benchmark times.

  ``multi_step(state, data, indices [k, B], seed_key) -> (state, metrics)`` is
  the jitted step (donating the state) that training dispatches; ``data`` is
  the device-resident training set, ``state`` the freshly initialised state.
  """
  config: LoopConfig
  state: steps_lib.TrainState
  data: dict
  multi_step: Callable
  seed_key: jax.Array
  sampler: "EpochSampler"
  mesh: Any
  index_sharding: Any

  def indices(self, step: int, count: int):
    """The device indices of steps step .. step + count - 1 (this process's slice)."""
    return sharding.put_process_slice(self.sampler.indices(step, count),
                                      self.index_sharding, axis=1)


def setup(*, init_fn: Callable[[jax.Array], dict], loss_fn: steps_lib.LossFn,
          tx: optax.GradientTransformation, train_data: dict[str, np.ndarray],
          config: LoopConfig) -> Setup:
  """Validates the settings and builds the state, the data on device and the step."""
  num_examples = len(next(iter(train_data.values())))
  config.validate(num_examples)
  mesh = sharding.make_mesh(config.num_devices)
  if config.batch_size % mesh.size:
    raise UsageError(f"batch_size={config.batch_size} must be a multiple of the "
                     f"{mesh.size} devices")
  repl = sharding.replicated(mesh)
  init_key, seed_key = jax.random.split(jax.random.key(config.seed))
  state = sharding.put(steps_lib.create_train_state(init_fn(init_key), tx), repl)
  return Setup(
      config=config, state=state, data=sharding.put(train_data, repl),
      multi_step=jax.jit(steps_lib.make_multi_step(loss_fn), donate_argnums=(0,)),
      seed_key=seed_key,
      sampler=EpochSampler(num_examples, config.batch_size, config.seed),
      mesh=mesh, index_sharding=sharding.batch_sharded(mesh, leading_axes=1))


def train(*, init_fn: Callable[[jax.Array], dict], loss_fn: steps_lib.LossFn,
          tx: optax.GradientTransformation, train_data: dict[str, np.ndarray],
          config: LoopConfig, workdir: str,
          eval_fn: Callable | None = None,
          eval_data: dict[str, dict[str, np.ndarray]] | None = None,
          on_eval: Callable[[int, dict[str, dict], float], None] | None = None,
          eval_prepare: Callable[[Any], Any] | None = None,
          ) -> TrainResult:
  """Trains from scratch or resumes from ``workdir/checkpoints``.

  Args:
    init_fn: rng -> variables ({"params": ..., other collections}). Called
      eagerly, so it may run host code (data-dependent initialisation); jit
      the model's ``init`` inside it, which saves seconds of per-initializer
      compilation on CPU.
    loss_fn: see ``steps.LossFn``.
    tx: the Optax optimizer.
    train_data: dict of arrays with the same leading size (kept on device).
    config: loop settings.
    workdir: where checkpoints/ and metrics.jsonl go.
    eval_fn: (variables, batch) -> dict of per-example [B] metrics.
    eval_data: {split name: dict of arrays}, evaluated every ``eval_every``
      steps and at the end.
    on_eval: optional hook called after each evaluation with (step, {split:
      metrics}, seconds spent training so far, evaluations excluded); used by
      the benchmark to time convergence.
    eval_prepare: optional variables -> variables, called once per evaluation
      before its batches (constants every batch would otherwise recompute,
      such as an energy model's log Z).
  """
  run = setup(init_fn=init_fn, loss_fn=loss_fn, tx=tx, train_data=train_data,
              config=config)
  state, mesh = run.state, run.mesh
  ckpt = checkpoint_lib.Checkpointer(f"{workdir}/checkpoints", config.checkpoint_every)
  restored = ckpt.restore_latest(state)
  start = 0
  if restored is not None:
    start, state = restored
    if jax.process_index() == 0:  # at the default level: the user should know
      print(f"resumed from step {start}", file=sys.stderr, flush=True)
  preemption.note_checkpoint(start)
  # The training seconds of the earlier sessions, up to the step resumed from.
  seconds_at = ({k: v for k, v in _load_train_seconds(workdir).items() if k <= start}
                if restored is not None else {})
  base_seconds = seconds_at.get(start, 0.0)
  # Multi-process: process 0 writes metrics.jsonl and TensorBoard events; the
  # others keep the same records in memory (Orbax coordinates the checkpoints).
  writer = (metrics_lib.MetricWriter(workdir, resume_step=start)
            if jax.process_index() == 0 else _MemoryWriter())

  eval_step = jax.jit(steps_lib.make_eval_step(eval_fn)) if eval_fn else None

  eval_seconds = 0.0
  window: list[dict] = _load_window(workdir, start)

  def trained_so_far():
    return base_seconds + time.perf_counter() - t0 - eval_seconds

  def save(step, force=False):
    if ckpt.save(step, state, force=force):
      preemption.note_checkpoint(step)
      if jax.process_index() == 0:
        seconds_at[step] = trained_so_far()
        _save_train_seconds(workdir, seconds_at)

  def run_eval(step):
    nonlocal eval_seconds
    if eval_step is None or not eval_data:
      return
    t = time.perf_counter()
    # A checkpointed step's recorded seconds where there is one: a re-run of a
    # finished run rewrites the same records.
    trained_seconds = seconds_at.get(step, trained_so_far())
    results = {}
    variables = state.variables if eval_prepare is None else eval_prepare(state.variables)
    final = step == config.num_steps
    for split, split_data in eval_data.items():
      results[split] = evaluate(
          eval_step, variables, split_data, config.eval_batch_size, mesh,
          phase=(f"evaluating the {split} split at the end of training" if final
                 else f"evaluating the {split} split at step {step}"))
      # With the training seconds so far (evaluations excluded): the
      # held-out score against wall time, for the image report's curves.
      writer.write(step, split, {**results[split], "train_seconds": trained_seconds})
    eval_seconds += time.perf_counter() - t
    if on_eval is not None:
      on_eval(step, results, trained_seconds)

  boundaries = [config.log_every, config.checkpoint_every, config.eval_every]
  bar = tqdm.tqdm(total=config.num_steps, initial=start,
                  disable=(not config.progress or jax.process_index() > 0
                           or config.num_steps == start),  # nothing to train
                  desc="train", unit="step", dynamic_ncols=True, leave=False)
  t0 = time.perf_counter()
  train_seconds = 0.0
  step = start
  try:
    while step < config.num_steps:
      nxt = min([config.num_steps] + [(step // b + 1) * b for b in boundaries if b])
      count = min(config.steps_per_dispatch, nxt - step)
      # Every process computes the same global [count, B] indices; each sends
      # only the columns its devices hold (jax.device_put with one process).
      state, metrics = run.multi_step(state, run.data, run.indices(step, count),
                                      run.seed_key)
      metrics = jax.device_get(metrics)
      bad = _first_bad(metrics)
      if bad is not None:
        j, quantity = bad
        saved = ckpt.steps()
        raise NonFiniteError(
            f"non-finite {quantity} at step {step + j}; stopped without applying "
            f"it (last good checkpoint: {f'step {saved[-1]}' if saved else 'none'}). "
            f"Lower the learning rate or check the data")
      window.extend({k: v[i] for k, v in metrics.items() if k != "finite"}
                    for i in range(count))
      step += count
      bar.update(count)
      if step % config.log_every == 0 or step == config.num_steps:
        mean = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
        writer.write(step, "train", mean)
        bar.set_postfix(loss=f"{mean['loss']:.4f}")
        window = []
      signum = None
      if config.eval_every and step % config.eval_every == 0 and step < config.num_steps:
        try:
          run_eval(step)
        except preemption.Preempted as e:  # keep the steps it was evaluating
          signum = e.signum
      save(step)
      if step < config.num_steps and (signum or (signum := preemption.should_stop())):
        save(step, force=True)
        if jax.process_index() == 0:
          _save_window(workdir, step, window)
        raise preemption.Preempted(step, signum)
    train_seconds = trained_so_far()
    save(step, force=True)
    if jax.process_index() == 0 and step not in seconds_at:  # saved by an earlier run
      seconds_at[step] = train_seconds
      _save_train_seconds(workdir, seconds_at)
    run_eval(step)
  finally:
    bar.close()
    try:
      ckpt.close()  # swallows its own errors
    finally:
      writer.close()  # may raise OSError (a full disk) as it flushes
  return TrainResult(state=state, history=writer.records,
                     train_seconds=train_seconds, resumed_from=start)
