"""A non-finite loss or gradient stops the run within one step, naming both.

The engine test poisons one training example that the (seed, step) batch
order first serves at a known step, and checks the error names that step and
the quantity (loss, or gradient norm when only the gradient blows up), that
nothing after the last good checkpoint was written, and that the checkpoints
on disk are intact: the newest equals, bitwise, an unpoisoned run's state at
that step. That an entry point turns this into exit status 1 and one error
line is checked in test_bad_input.py (test_diverging_run_is_one_line_and_status_1),
where the entry points run without paying for their imports again.
"""

import re

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from genmodels.training import checkpoint as checkpoint_lib
from genmodels.training import loop
from genmodels.training import metrics as metrics_lib
from genmodels.training import steps as steps_lib

N, BATCH, SEED, BAD_STEP = 512, 8, 5, 25  # 64 steps per epoch: one visit each


class _MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(1)(nn.tanh(nn.Dense(8)(x)))[:, 0]


_model = _MLP()


def _init(key):
  return _model.init(key, jnp.zeros((1, 4)))


def _loss(variables, batch, rng, train):
  """MSE, plus a term whose value is 0 but whose gradient is NaN on poisoned batches."""
  del rng, train
  pred = _model.apply(variables, batch["x"])
  loss = jnp.mean((pred - batch["y"]) ** 2)
  bad = jnp.max(batch["bad_grad"])  # 1 when a poisoned example is in the batch
  w = jax.tree.leaves(variables["params"])[0]
  # sqrt(0) has an infinite derivative: d/dw = inf * 0 = NaN, value stays 0.
  loss = loss + jnp.sqrt(jnp.abs(jnp.sum(w)) * 0.0 * bad + (1.0 - bad)) - (1.0 - bad)
  return loss, ({"mse": loss}, {})


def _data(poison=None):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(N, 4)).astype(np.float32)
  data = {"x": x, "y": np.cos(x.sum(1)).astype(np.float32),
          "bad_grad": np.zeros(N, np.float32)}
  if poison:
    # An example of BAD_STEP's batch; in the first epoch it is seen only there.
    index = loop.EpochSampler(N, BATCH, SEED).indices(BAD_STEP)[0, 3]
    if poison == "loss":
      data["x"][index, 2] = np.nan
    else:
      data["bad_grad"][index] = 1.0
  return data


def _config(num_steps, steps_per_dispatch=1):
  return loop.LoopConfig(num_steps=num_steps, batch_size=BATCH, seed=SEED, log_every=10,
                         checkpoint_every=10, steps_per_dispatch=steps_per_dispatch,
                         progress=False)


def _train(workdir, data, config):
  return loop.train(init_fn=_init, loss_fn=_loss, tx=optax.adam(1e-2), train_data=data,
                    config=config, workdir=str(workdir))


@pytest.fixture(scope="module")
def clean_state_at_20(tmp_path_factory):
  return _train(tmp_path_factory.mktemp("clean"), _data(), _config(20)).state


@pytest.mark.parametrize("poison,quantity,steps_per_dispatch", [
    ("loss", "loss", 1), ("gradient", "gradient norm", 4)])
def test_nonfinite_stops_at_the_step_and_keeps_the_last_good_checkpoint(
    tmp_path, clean_state_at_20, poison, quantity, steps_per_dispatch):
  with pytest.raises(loop.NonFiniteError) as info:
    _train(tmp_path, _data(poison), _config(40, steps_per_dispatch))
  msg = str(info.value)
  assert "\n" not in msg
  assert re.search(rf"non-finite {quantity} at step {BAD_STEP}\b", msg), msg
  assert "last good checkpoint: step 20" in msg

  # Nothing after the last good checkpoint reached the disk...
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path / "checkpoints"), 10)
  assert ckpt.steps() == [10, 20]
  records = metrics_lib.read_metrics(str(tmp_path / "metrics.jsonl"))
  assert [r["step"] for r in records] == [10, 20]
  assert all(np.isfinite(r["loss"]) for r in records)
  # ... and the checkpoint is intact: bitwise the state of a run never poisoned.
  abstract = steps_lib.create_train_state(_init(jax.random.key(0)), optax.adam(1e-2))
  step, state = ckpt.restore_latest(abstract)
  ckpt.close()
  assert step == 20 and int(state.step) == 20
  assert checkpoint_lib.state_digest(state) == checkpoint_lib.state_digest(clean_state_at_20)
