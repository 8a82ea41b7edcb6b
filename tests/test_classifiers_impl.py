"""The CNN's im2col convolutions compute what lax.conv does, with the same parameters.

Tolerances: float32 sums in another order, so outputs and gradients agree to
~1e-6 relative (asserted: rtol 1e-4, atol 1e-5); bfloat16 to its 8-bit mantissa
(asserted: atol 0.05 on logits of size ~1).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from genmodels.networks import classifiers
from genmodels.classify import task as classify_task
from genmodels.training import steps

RTOL, ATOL = 1e-4, 1e-5


def _abstract(shape, conv_impl="xla"):
  model = classifiers.CNN(conv_impl=conv_impl)
  return jax.eval_shape(lambda: model.init(
      {"params": jax.random.key(0), "dropout": jax.random.key(1)},
      jnp.zeros(shape), train=False))


@functools.lru_cache
def _init(shape):
  """Random CNN variables for inputs of ``shape``: model.init compiles for
  seconds, so draw them with numpy (scaled like a fan-in init; BatchNorm
  variances positive)."""
  rng = np.random.default_rng(0)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path)
    if "var" in name or "scale" in name:
      return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32))
    fan_in = int(np.prod(leaf.shape[:-1])) if leaf.ndim > 1 else 10
    return jnp.asarray(rng.normal(0, fan_in ** -0.5, leaf.shape).astype(np.float32))

  return jax.tree_util.tree_map_with_path(draw, _abstract(shape))


def _x(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).random(shape, dtype=np.float32))


@pytest.mark.parametrize("kernel, stride, padding", [
    ((3, 3), (1, 1), "SAME"), ((3, 3), (2, 2), "SAME"), ((3, 3), (1, 1), "VALID"),
    ((1, 1), (1, 1), "SAME"), ((5, 5), (2, 2), "SAME"), ((3, 2), (2, 1), ((2, 0), (1, 1))),
])
def test_im2col_conv_matches_lax_conv_and_its_gradients(kernel, stride, padding):
  x, k = _x((2, 9, 10, 3)), _x((*kernel, 3, 4), seed=1) - 0.5
  dn = jax.lax.conv_dimension_numbers(x.shape, k.shape, ("NHWC", "HWIO", "NHWC"))

  def ref(x, k):
    return jax.lax.conv_general_dilated(x, k, stride, padding, dimension_numbers=dn)

  def ours(x, k):
    return classifiers.im2col_conv(x, k, stride, padding, dimension_numbers=dn)

  ref, ours = jax.jit(ref), jax.jit(ours)  # eager slices compile one by one

  np.testing.assert_allclose(ours(x, k), ref(x, k), rtol=RTOL, atol=ATOL)
  g = _x(ref(x, k).shape, seed=2)
  for a, b in zip(jax.vjp(ours, x, k)[1](g), jax.vjp(ref, x, k)[1](g)):
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)


def test_cnn_im2col_same_parameters():
  # Same names, shapes and dtypes: checkpoints are interchangeable. (The values
  # come from the same nn.Conv initialisers, which never call the conv.)
  for shape in ((1, 28, 28, 1), (1, 32, 32, 3)):
    assert _abstract(shape) == _abstract(shape, "im2col")


@pytest.mark.parametrize("shape", [(1, 28, 28, 1)])  # 3 channels: the engine test
def test_cnn_im2col_same_outputs(shape):
  x = _x((3, *shape[1:]))
  xla, im2col = classifiers.CNN(), classifiers.CNN(conv_impl="im2col")
  v = _init(shape)

  def both(m):  # eval and train mode, jitted (eager conv ops compile one by one)
    return jax.jit(lambda v, x: (m.apply(v, x, train=False), m.apply(
        v, x, train=True, rngs={"dropout": jax.random.key(2)},
        mutable=["batch_stats"])))(v, x)

  (e1, (y1, s1)), (e2, (y2, s2)) = both(xla), both(im2col)
  # Evaluation has no weight gradient and no scan: both take lax.conv.
  np.testing.assert_array_equal(e2, e1)
  np.testing.assert_allclose(y2, y1, rtol=RTOL, atol=ATOL)  # same dropout mask
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL),
               s2, s1)


def test_cnn_im2col_same_train_steps_in_the_engine():
  """Three steps of the engine's multi-step (lax.scan) give the same state."""
  rng = np.random.default_rng(0)
  data = {"image": jnp.asarray(rng.integers(0, 256, (64, 12, 12, 3), dtype=np.uint8)),
          "label": jnp.asarray(rng.integers(0, 10, 64).astype(np.int32))}
  idx = jnp.asarray(rng.integers(0, 64, (3, 16)).astype(np.int32))
  out = {}
  for impl in classifiers.CONV_IMPLS:
    model = classifiers.CNN(conv_impl=impl)
    v = jax.tree.map(jnp.copy, _init((1, 12, 12, 3)))
    state = steps.create_train_state(v, optax.sgd(0.01))
    multi = jax.jit(steps.make_multi_step(classify_task.classification_loss(model)))
    out[impl] = multi(state, data, idx, jax.random.key(3))
  (s1, m1), (s2, m2) = out["xla"], out["im2col"]
  np.testing.assert_allclose(m2["loss"], m1["loss"], rtol=RTOL)
  # atol 1e-4: rounding differences grow a little over three updates.
  jax.tree_util.tree_map_with_path(
      lambda p, a, b: np.testing.assert_allclose(
          a, b, rtol=RTOL, atol=10 * ATOL, err_msg=jax.tree_util.keystr(p)),
      s2.variables, s1.variables)


def test_cnn_im2col_bfloat16():
  x = _x((2, 12, 12, 3))
  v = _init((1, 12, 12, 3))
  def train_mode(impl):  # evaluation takes lax.conv with either impl
    model = classifiers.CNN(dtype=jnp.bfloat16, conv_impl=impl)
    return jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"],
                                            rngs={"dropout": jax.random.key(2)})[0])(v, x)
  ys = [train_mode(impl) for impl in classifiers.CONV_IMPLS]
  assert ys[1].dtype == jnp.bfloat16
  np.testing.assert_allclose(np.float32(ys[1]), np.float32(ys[0]), atol=0.05)


def test_cnn_unknown_conv_impl():
  with pytest.raises(ValueError, match="conv_impl"):
    classifiers.CNN(conv_impl="winograd").init(jax.random.key(0), _x((1, 8, 8, 1)),
                                               train=False)
