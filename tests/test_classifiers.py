"""Tests for genmodels.networks.classifiers.

XLA compiles dominate on CPU, so the tests share jitted functions, one small
image shape, and 'rbg' keys (much cheaper to compile than threefry).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from genmodels.networks.classifiers import CLASSIFIERS, CNN, MLP, get_classifier

SMALL = (4, 8, 8, 3)  # batch and image shape of the behaviour tests


def key(seed):
  return jax.random.key(seed, impl="rbg")


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


@functools.cache
def _init_fn(model):
  return jax.jit(lambda k: model.init(k, jnp.zeros(SMALL), train=False))


@functools.cache
def _eval_fn(model):
  return jax.jit(lambda v, x: model.apply(v, x, train=False))


@functools.cache
def _train_fn(model):
  """Training-mode (logits, mutated collections) for a dropout seed."""
  return jax.jit(lambda v, x, seed: model.apply(
      v, x, train=True, rngs={"dropout": key(seed)},
      mutable=["batch_stats", "intermediates"], capture_intermediates=True))


def _uniform(seed, shape=SMALL):
  return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


@pytest.fixture(scope="module")
def cnn_vars():
  """CNN variables with non-trivial running averages (var > 0)."""
  variables = _init_fn(CNN())(key(0))
  rng = np.random.default_rng(1)
  stats = jax.tree_util.tree_map_with_path(
      lambda path, v: jnp.asarray(rng.uniform(0.5, 2.0, v.shape) if "var" in str(path[-1])
                                  else rng.normal(size=v.shape), jnp.float32),
      variables["batch_stats"])
  return {**variables, "batch_stats": stats}


def test_mlp_param_count():
  variables = jax.eval_shape(lambda: MLP().init(key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  assert set(variables) == {"params"}
  assert _count(variables["params"]) == 646_260


def test_cnn_param_count():
  variables = jax.eval_shape(lambda: CNN().init(key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  assert _count(variables["params"]) == 591_914
  assert _count(variables["batch_stats"]) == 640
  assert _count(variables) == 592_554


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_uint8_inputs_and_bf16(name, cnn_vars):
  variables = cnn_vars if name == "cnn" else _init_fn(get_classifier(name))(key(0))
  x = np.random.default_rng(0).integers(0, 256, SMALL, dtype=np.uint8)
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables))
  # uint8 input is scaled to [0, 1]: same logits as the float input.
  eval32 = _eval_fn(get_classifier(name))
  logits = eval32(variables, x)
  assert logits.shape == (4, 10) and logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, eval32(variables, (x / 255).astype(np.float32)), rtol=1e-5, atol=1e-5)
  # bf16 computation with the same float32 parameters.
  logits16 = _eval_fn(get_classifier(name, dtype=jnp.bfloat16))(variables, x)
  assert logits16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(logits16, np.float32), logits, rtol=0.1, atol=0.1)


def test_batchnorm_train_uses_batch_stats_and_updates_moving_average(cnn_vars):
  x = _uniform(2)
  _, state = _train_fn(CNN())(cnn_vars, x, 0)
  inter = state["intermediates"]
  h = np.asarray(inter["Conv_0"]["__call__"][0], np.float64)  # input of BatchNorm_0
  y = np.asarray(inter["BatchNorm_0"]["__call__"][0])
  mean, var = h.mean(axis=(0, 1, 2)), h.var(axis=(0, 1, 2))
  p = cnn_vars["params"]["BatchNorm_0"]
  expected = (h - mean) / np.sqrt(var + 1e-3) * np.asarray(p["scale"]) + np.asarray(p["bias"])
  np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)

  old, new = cnn_vars["batch_stats"]["BatchNorm_0"], state["batch_stats"]["BatchNorm_0"]
  np.testing.assert_allclose(new["mean"], 0.99 * np.asarray(old["mean"]) + 0.01 * mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new["var"], 0.99 * np.asarray(old["var"]) + 0.01 * var, rtol=1e-5, atol=1e-6)
  # Every BatchNorm layer (4 conv + 1 dense) was updated.
  assert len(cnn_vars["batch_stats"]) == 5
  for layer in cnn_vars["batch_stats"]:
    assert not np.allclose(state["batch_stats"][layer]["mean"], cnn_vars["batch_stats"][layer]["mean"])


def test_batchnorm_eval_uses_running_averages(cnn_vars):
  x, other = _uniform(3), _uniform(4)
  other[0] = x[0]  # same first example, different rest of the batch
  eval_fn = jax.jit(lambda v, x: CNN().apply(
      v, x, train=False, mutable=["intermediates"], capture_intermediates=True))
  out, state = eval_fn(cnn_vars, x)
  np.testing.assert_array_equal(out, eval_fn(cnn_vars, x)[0])
  np.testing.assert_allclose(out[0], eval_fn(cnn_vars, other)[0][0], rtol=1e-5, atol=1e-5)
  # The first BatchNorm normalises with the running averages.
  h = np.asarray(state["intermediates"]["Conv_0"]["__call__"][0])
  y = np.asarray(state["intermediates"]["BatchNorm_0"]["__call__"][0])
  stats, p = cnn_vars["batch_stats"]["BatchNorm_0"], cnn_vars["params"]["BatchNorm_0"]
  expected = ((h - np.asarray(stats["mean"])) / np.sqrt(np.asarray(stats["var"]) + 1e-3)
              * np.asarray(p["scale"]) + np.asarray(p["bias"]))
  np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
  # In training, by contrast, an example's output depends on the rest of the batch.
  train_fn = _train_fn(CNN())
  assert not np.allclose(train_fn(cnn_vars, x, 0)[0][0], train_fn(cnn_vars, other, 0)[0][0])


def test_dropout_only_in_training(cnn_vars):
  x, train_fn = _uniform(5), _train_fn(CNN())
  np.testing.assert_array_equal(train_fn(cnn_vars, x, 0)[0], train_fn(cnn_vars, x, 0)[0])
  assert not np.allclose(train_fn(cnn_vars, x, 0)[0], train_fn(cnn_vars, x, 1)[0])
  # Evaluation ignores any dropout rng.
  eval_rng = jax.jit(lambda v, x, seed: CNN().apply(v, x, train=False, rngs={"dropout": key(seed)}))
  np.testing.assert_array_equal(eval_rng(cnn_vars, x, 0), eval_rng(cnn_vars, x, 1))
  np.testing.assert_array_equal(eval_rng(cnn_vars, x, 0), _eval_fn(CNN())(cnn_vars, x))


def test_cnn_loss_falls_with_adam():
  rng = np.random.default_rng(6)
  x = rng.uniform(size=(16, 8, 8, 3)).astype(np.float32)
  y = rng.integers(0, 10, 16)
  model, tx = CNN(), optax.adam(1e-3)
  variables = _init_fn(model)(key(0))  # fresh running averages
  params, stats = variables["params"], variables["batch_stats"]
  opt_state = jax.jit(tx.init)(params)

  @jax.jit
  def step(params, stats, opt_state, k):
    def loss_fn(params):
      logits, new = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                                rngs={"dropout": k}, mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new["batch_stats"]
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state, loss

  losses = []
  for seed in range(20):
    params, stats, opt_state, loss = step(params, stats, opt_state, key(seed))
    losses.append(float(loss))
  assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3]), losses


def test_unknown_name():
  with pytest.raises(ValueError, match="unknown classifier 'resnet'; valid names: cnn, cnn_fast, mlp"):
    get_classifier("resnet")
