"""Train state and the pure, jit-able train and eval steps.

An experiment gives the engine one function, the loss:

    loss_fn(variables, batch, rng, train) -> (loss, (metrics, new_model_state))

``variables`` is ``{"params": ..., **model_state}`` (``batch_stats`` for
BatchNorm models); ``metrics`` is a dict of scalars to log; ``new_model_state``
holds the updated mutable collections (empty for density models). The same
loss serves evaluation with ``train=False``.
"""

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

LossFn = Callable[..., tuple[jax.Array, tuple[dict, dict]]]
Batch = dict[str, jax.Array]


class TrainState(train_state.TrainState):
  """Flax's TrainState plus the model's mutable collections (e.g. batch_stats)."""
  model_state: flax.core.FrozenDict[str, Any] | dict = flax.struct.field(
      default_factory=dict)

  @property
  def variables(self) -> dict:
    return {"params": self.params, **self.model_state}


def create_train_state(variables: dict, tx: optax.GradientTransformation) -> TrainState:
  """The state of ``variables`` ({"params": ..., other collections}) under ``tx``."""
  variables = dict(variables)
  params = variables.pop("params")
  return TrainState.create(apply_fn=None, params=params, tx=tx, model_state=variables)


def step_rng(seed_key: jax.Array, step) -> jax.Array:
  """Every random key derives from (seed, step): resuming replays the same keys."""
  return jax.random.fold_in(seed_key, step)


def make_train_step(loss_fn: LossFn) -> Callable:
  """A pure train step with a non-finite guard.

  Returns ``train_step(state, batch, seed_key) -> (state, metrics)``. If the loss
  or the gradient norm is not finite, the update is *not* applied: the returned
  state equals the input state and ``metrics["finite"]`` is False, so the host
  can stop the run naming the step while the last good state stays intact.
  """

  def train_step(state: TrainState, batch: Batch, seed_key: jax.Array):
    rng = step_rng(seed_key, state.step)

    def objective(params):
      return loss_fn({"params": params, **state.model_state}, batch, rng, True)

    (loss, (metrics, new_model_state)), grads = jax.value_and_grad(
        objective, has_aux=True)(state.params)
    grad_norm = optax.global_norm(grads)
    new_state = state.apply_gradients(
        grads=grads, model_state={**state.model_state, **new_model_state})
    # The update itself can overflow (e.g. a bad schedule): check the new params.
    finite = (jnp.isfinite(loss) & jnp.isfinite(grad_norm)
              & jnp.isfinite(optax.global_norm(new_state.params)))
    new_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_state, state)
    metrics = {**metrics, "loss": loss, "grad_norm": grad_norm, "finite": finite}
    return new_state, metrics

  return train_step


def make_multi_step(loss_fn: LossFn) -> Callable:
  """k train steps in one dispatch with lax.scan, stopping at the first bad one.

  ``multi_step(state, data, indices [k, B], seed_key)`` gathers each batch from
  the device-resident ``data`` (a dict of arrays) by index, so the host sends
  only indices. After a non-finite step no later update is applied.
  """
  train_step = make_train_step(loss_fn)

  def multi_step(state, data, indices, seed_key):
    def body(carry, idx):
      state, ok = carry
      batch = jax.tree.map(lambda a: a[idx], data)
      new_state, metrics = train_step(state, batch, seed_key)
      ok_after = ok & metrics["finite"]
      state = jax.tree.map(lambda n, o: jnp.where(ok_after, n, o), new_state, state)
      return (state, ok_after), metrics

    (state, _), metrics = jax.lax.scan(body, (state, jnp.array(True)), indices)
    return state, metrics

  return multi_step


def make_eval_step(per_example_fn: Callable) -> Callable:
  """Sums of per-example metrics over a padded batch.

  ``per_example_fn(variables, batch) -> dict of [B] arrays``; ``mask`` [B]
  marks the real examples, so any dataset size evaluates exactly.
  """

  def eval_step(variables, batch, mask):
    values = per_example_fn(variables, batch)
    sums = {k: jnp.sum(jnp.where(mask, v, 0.0)) for k, v in values.items()}
    return sums

  return eval_step
