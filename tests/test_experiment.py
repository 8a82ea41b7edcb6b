"""The one shape: a new experiment is a bundle in one file, run by ``experiment.run``.

The tiny experiment below (least squares on a line) is written here, in the
test, and touches nothing under ``genmodels/training/``: the run function
builds its loop settings and optimizer from the config, trains it with resume
and the non-finite guard, and writes results.json with the run's provenance.
"""

import json
import types

import chex
from flax import linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from genmodels.training import experiment
from genmodels.training import loop
from genmodels.training import optim
from genmodels.training import preemption

# ----------------------------------------------------- a tiny experiment


class _Line(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(1)(x)[:, 0]


def _config(num_steps=200, learning_rate=0.1):
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_train = 256
  c.line = experiment.unit(
      train=dict(num_steps=num_steps, batch_size=32, log_every=10,
                 checkpoint_every=20, steps_per_dispatch=5),
      optimizer=dict(name="adam", learning_rate=learning_rate,
                     schedule="warmup_cosine", warmup_steps=5))
  return c


def _load_data(config):
  rng = np.random.default_rng(config.seed)
  x = rng.normal(size=(config.num_train, 1)).astype(np.float32)
  return {"x": x, "y": (3.0 * x[:, 0] - 1.0).astype(np.float32)}


def _tasks(config, data, options):
  del options
  model = _Line()

  def loss(variables, batch, rng, train):
    del rng, train
    mse = jnp.mean((model.apply(variables, batch["x"]) - batch["y"]) ** 2)
    return mse, ({"mse": mse}, {})

  def report(result, workdir):
    del workdir
    kernel = result.state.params["Dense_0"]["kernel"]
    return {"slope": float(kernel[0, 0]), "mse": float(result.last("train")["mse"]),
            "num_params": experiment.num_params(result.state.params)}

  yield experiment.Task(
      name="line", config=config.line,
      init=lambda k: model.init(k, jnp.zeros((1, 1))), loss=loss, train_data=data,
      eval_fn=lambda v, b: {"mse": (model.apply(v, b["x"]) - b["y"]) ** 2},
      eval_data={"train": data}, report=report)


TINY = types.SimpleNamespace(
    load_data=_load_data, tasks=_tasks,
    summarize=lambda config, data, rows, workdir, options, run: {"models": rows},
    unit_configs=lambda config: {"line": config.line},
    num_examples=lambda config: config.num_train,
    table=lambda results: str(results["models"]))


def _params(workdir):
  ckpt = sorted(p for p in (workdir / "models" / "line" / "checkpoints").iterdir()
                if p.name.isdigit())
  return ckpt[-1].name


def test_tiny_experiment_trains_reports_and_records_the_run(tmp_path):
  results = experiment.run(TINY, _config(), str(tmp_path),
                           experiment.Options(progress=False))
  row = results["models"]["line"]
  assert row["slope"] == pytest.approx(3.0, abs=0.05)  # it learned the line
  assert row["num_params"] == 2
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["models"]["line"] == row
  assert saved["run"]["versions"]["jax"] == jax.__version__
  assert "cpu_steal_fraction" in saved["run"] and saved["run"]["wall_seconds"] > 0


def test_tiny_experiment_preempted_then_resumed_equals_uninterrupted(tmp_path):
  want = experiment.run(TINY, _config(), str(tmp_path / "ref"),
                        experiment.Options(progress=False))
  workdir = tmp_path / "run"
  with preemption.handle_signals():
    preemption.request()
    with pytest.raises(preemption.Preempted) as info:
      experiment.run(TINY, _config(), str(workdir), experiment.Options(progress=False))
  assert info.value.step == 5 and _params(workdir) == "5"
  got = experiment.run(TINY, _config(), str(workdir), experiment.Options(progress=False))
  assert got["models"] == want["models"]  # bitwise: floats compare exactly


def test_tiny_experiment_non_finite_stops_with_the_step(tmp_path):
  with pytest.raises(loop.NonFiniteError, match="non-finite .* at step"):
    experiment.run(TINY, _config(learning_rate=1e30), str(tmp_path),
                   experiment.Options(progress=False))
  assert not (tmp_path / "results.json").exists()


@pytest.mark.parametrize("field,value,words", [
    ("line.train.batch_size", 1000, "larger than the 256"),
    ("line.train.batch_size", 0, "batch_size must be positive"),
    ("line.train.num_steps", -1, "num_steps must be >= 0"),
    ("line.optimizer.learning_rate", float("nan"), "learning_rate"),
    ("line.optimizer.name", "sgd", "unknown optimizer"),
    ("line.optimizer.schedule", "step", "unknown schedule"),
    ("line.train.log_every", 7, "multiple of log_every"),
    ("seed", -1, "seed must be in"),
])
def test_validate_refuses_a_bad_config_naming_the_field(field, value, words):
  config = _config()
  *parents, leaf = field.split(".")
  node = config
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(ValueError, match=words):
    experiment.validate(TINY, config)


# ------------------------------------------- the factory, batching, counting

def test_warmup_cosine_matches_its_closed_form():
  cfg = optim.optimizer_config(learning_rate=0.2, schedule="warmup_cosine",
                               warmup_steps=10, end_factor=0.01)
  lr = optim.schedule(cfg, 110)
  assert float(lr(0)) == 0.0 and float(lr(5)) == pytest.approx(0.1)
  for t in (10, 40, 75, 110):
    cosine = 0.5 * (1 + np.cos(np.pi * (t - 10) / 100))
    assert float(lr(t)) == pytest.approx(0.002 + (0.2 - 0.002) * cosine, rel=1e-5)
  short = optim.schedule(cfg, 6)  # warm-up capped at half the run
  assert float(short(3)) == pytest.approx(0.2)


def test_onecycle_peaks_at_the_rate_and_ends_divided():
  cfg = optim.optimizer_config(learning_rate=0.4, schedule="onecycle",
                               warmup_fraction=0.25, div_factor=10,
                               final_div_factor=100)
  lr = optim.schedule(cfg, 100)
  assert float(lr(0)) == pytest.approx(0.04)
  assert float(lr(25)) == pytest.approx(0.4)
  assert float(lr(100)) == pytest.approx(0.4 / 10 / 100)


def test_make_adds_clipping_and_decay_only_when_asked():
  params = {"w": jnp.array([1.0, -2.0])}
  grads = {"w": jnp.array([30.0, 40.0])}  # norm 50

  def update(**fields):
    tx = optim.make(optim.optimizer_config(learning_rate=0.1, **fields), 10)
    return np.asarray(tx.update(grads, tx.init(params), params)[0]["w"])

  np.testing.assert_array_equal(update(), optax.adam(0.1).update(
      grads, optax.adam(0.1).init(params))[0]["w"])
  clipped = optax.chain(optax.clip_by_global_norm(5.0), optax.adam(0.1))
  np.testing.assert_array_equal(update(grad_clip=5.0), clipped.update(
      grads, clipped.init(params))[0]["w"])
  decayed = optax.adamw(0.1, weight_decay=0.5)
  np.testing.assert_array_equal(update(name="adamw", weight_decay=0.5), decayed.update(
      grads, decayed.init(params), params)[0]["w"])


def test_batched_equals_one_call_and_compiles_once():
  x = np.random.default_rng(0).normal(size=(1000, 3)).astype(np.float32)
  fn = jax.jit(chex.assert_max_traces(lambda a: jnp.tanh(a) * 2.0, n=1))
  out = experiment.batched(fn, x, batch_size=256)  # 3 full batches and a padded one
  np.testing.assert_array_equal(out, np.asarray(jnp.tanh(x) * 2.0))
  pair = experiment.batched(jax.jit(lambda a, b: a[:, 0] + b), x, x[:, 1], batch_size=300)
  np.testing.assert_array_equal(pair, x[:, 0] + x[:, 1])


def test_num_params_counts_leaves_or_the_models_degrees_of_freedom():
  tree = {"a": np.zeros((3, 4)), "b": {"c": np.zeros(5)}}
  assert experiment.num_params(tree) == 17
  model = types.SimpleNamespace(num_free_params=lambda params: 11)
  assert experiment.num_params(tree, model) == 11


def test_a_block_of_blocks_gives_each_part_its_own_optimizer():
  params = {"generator": {"w": jnp.array([1.0, 2.0])},
            "discriminator": {"w": jnp.array([3.0])}}
  grads = {"generator": {"w": jnp.array([0.5, -1.0])},
           "discriminator": {"w": jnp.array([2.0])}}
  cfg = ml_collections.ConfigDict({
      "generator": optim.optimizer_config(learning_rate=0.1),
      "discriminator": optim.optimizer_config(name="adamw", learning_rate=0.01,
                                              weight_decay=0.5, grad_clip=1.0)})
  tx = optim.make(cfg, 10)
  updates = tx.update(grads, tx.init(params), params)[0]
  for part in params:
    alone = optim.make(cfg[part], 10)
    want = alone.update(grads[part], alone.init(params[part]), params[part])[0]
    np.testing.assert_array_equal(updates[part]["w"], want["w"])
  cfg.discriminator.learning_rate = -1.0
  with pytest.raises(ValueError, match="optimizer.discriminator: learning_rate"):
    optim.check(cfg)
