"""PixelCNN: exact mass (enumeration), causality (Jacobians), exact sampling."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from genmodels.errors import UsageError
from genmodels.images import pixelcnn as pc


# Tests whose subject is not the conv's implementation take lax's conv: XLA:CPU
# compiles im2col's 49 slices of a 7x7 kernel for ~2.5 s, lax's in ~0.6 s.
XLA = dict(conv_impl="xla")


def _all_images(k, h, w):
  """Every image of {0..k-1}^(h x w), [k**(h*w), h, w, 1] int32."""
  grid = np.array(list(itertools.product(range(k), repeat=h * w)), np.int32)
  return jnp.asarray(grid.reshape(-1, h, w, 1))


def _init(model, shape, seed=0, scale=1.0):
  """Random parameters of the init's shapes: N(0, scale^2 / fan_in) kernels and
  N(0, (scale/4)^2) biases, from numpy (a traced flax init compiles threefry
  for seconds on CPU; the tests need non-trivial values, not flax's)."""
  x = jnp.zeros((2, *shape), jnp.int32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, method="log_prob"))
  rng = np.random.default_rng(seed)

  def draw(leaf):
    fan_in = np.prod(leaf.shape[:-1]) if len(leaf.shape) > 1 else 16
    return jnp.asarray(rng.normal(0, scale / np.sqrt(fan_in), leaf.shape), jnp.float32)

  return jax.tree.map(draw, shapes["params"])


def _perturb(params, seed, scale=0.5):
  rng = np.random.default_rng(1000 + seed)
  return jax.tree.map(lambda p: p + scale * jnp.asarray(
      rng.normal(size=p.shape), jnp.float32), params)


def _log_prob_fn(model):
  """Jitted (params, x) -> log_prob(x); build once per model and reuse."""
  return jax.jit(lambda p, x: model.apply({"params": p}, x, method="log_prob"))


def _log_prob(model, params, x):
  return _log_prob_fn(model)(params, x)


def test_categorical_head_sums_to_one_over_all_2x2_images():
  model = pc.CARD.make(num_levels=4, image_shape=(2, 2, 1), filters=8, num_blocks=1,
                       **XLA)
  assert model.resolved_head() == "categorical"
  params = _init(model, (2, 2, 1))
  x = _all_images(4, 2, 2)
  log_prob = _log_prob_fn(model)
  for p in (params, _perturb(params, 1)):
    lp = log_prob(p, x)
    assert lp.shape == (256,)
    np.testing.assert_allclose(jnp.exp(jax.nn.logsumexp(lp)), 1.0, atol=1e-5)
    assert float(lp.max() - lp.min()) > 0.5  # not the uniform distribution


def test_logistic_head_sums_to_one_over_the_whole_2x1_space():
  model = pc.CARD.make(num_levels=16, image_shape=(2, 1, 1), filters=8, num_blocks=1,
                       head="logistic_mixture", num_mixtures=3, **XLA)
  params = _perturb(_init(model, (2, 1, 1)), 2)
  lp = _log_prob(model, params, _all_images(16, 2, 1))
  np.testing.assert_allclose(jnp.exp(jax.nn.logsumexp(lp)), 1.0, atol=1e-5)
  assert float(lp.max() - lp.min()) > 1.0


def test_logistic_head_conditionals_sum_to_one_with_256_levels():
  model = pc.CARD.make(num_levels=256, image_shape=(2, 1, 1), filters=8, num_blocks=1,
                       **XLA)
  assert model.resolved_head() == "logistic_mixture"
  params = _perturb(_init(model, (2, 1, 1)), 3)
  levels = jnp.arange(256)
  pixel_lp = jax.jit(lambda x: model.apply({"params": params}, x,
                                           method="pixel_log_probs")[0])
  first = jnp.stack([levels, jnp.full(256, 77)], 1).reshape(256, 2, 1, 1)
  second = jnp.stack([jnp.full(256, 200), levels], 1).reshape(256, 2, 1, 1)
  for x, i in ((first, 0), (second, 1)):
    lp = pixel_lp(x)[:, i]  # p(x_0) over x_0; p(x_1 | x_0 = 200) over x_1
    np.testing.assert_allclose(jnp.exp(jax.nn.logsumexp(lp)), 1.0, atol=1e-5)


def _reference_mass(k, logits, means, log_scales):
  """float64 sum_m w_m (sigmoid(a) - sigmoid(b)) with infinite outer edges."""
  logits, means = np.float64(logits), np.float64(means)
  s = np.exp(np.clip(np.float64(log_scales), *pc.LOG_SCALE_RANGE))
  c = np.arange(k) / (k - 1) * 2 - 1
  up = np.append(c[:-1] + 1 / (k - 1), np.inf)[:, None]
  lo = np.insert(c[1:] - 1 / (k - 1), 0, -np.inf)[:, None]
  sig = lambda t: 0.5 * (1 + np.tanh(t / 2))  # no overflow at |t| = inf
  w = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
  return (w * (sig((up - means) / s) - sig((lo - means) / s))).sum(-1)


def test_discretized_logistic_is_exact_and_finite_at_extremes():
  k = 256
  levels = jnp.arange(k)
  rng = np.random.default_rng(0)
  cases = [(rng.normal(size=4), rng.normal(size=4), rng.normal(size=4) - 3)
           for _ in range(3)]
  cases += [([1e3, -1e3, 0, 5], [1e3, -1e3, 0.3, 1.0], [-30, 30, -7, 7]),
            ([0, 0, 0, 0], [0.5, 0.5, -2, 3], [-20, -20, 20, 0])]
  log_prob = jax.jit(pc.discretized_logistic_log_prob, static_argnums=4)
  grad = jax.jit(jax.grad(lambda *a: jnp.sum(pc.discretized_logistic_log_prob(
      levels, *a, k).clip(-1e4)), argnums=(0, 1, 2)))
  for logits, means, log_scales in cases:
    args = [jnp.broadcast_to(jnp.asarray(a, jnp.float32), (k, 4))
            for a in (logits, means, log_scales)]
    lp = log_prob(levels, *args, k)
    assert not jnp.any(jnp.isnan(lp))
    np.testing.assert_allclose(jnp.exp(jax.nn.logsumexp(lp)), 1.0, atol=1e-5)
    ref = _reference_mass(k, logits, means, log_scales)
    big = ref > 1e-30
    np.testing.assert_allclose(np.exp(lp)[big], ref[big], rtol=2e-3, atol=1e-7)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grad(*args))


def test_output_at_pixel_i_depends_on_earlier_pixels_only():
  model = pc.CARD.make(num_levels=4, image_shape=(4, 4, 1), filters=8, num_blocks=2)
  params = _perturb(_init(model, (4, 4, 1)), 4, 0.1)
  x = jnp.asarray(np.random.default_rng(5).uniform(-1, 1, (1, 4, 4, 1)), jnp.float32)
  net = lambda x: model.apply({"params": params}, x)[0].reshape(16, -1)
  jac = jnp.abs(jax.jit(jax.jacrev(net))(x)).reshape(16, -1, 16).sum(1)  # [out i, in j]
  later = np.triu(np.ones((16, 16), bool))  # in pixel j >= out pixel i
  assert float(jnp.max(jnp.where(later, jac, 0))) == 0.0
  assert bool(jnp.all(jnp.where(later, 0, jac).sum(1)[1:] > 0))


def test_windowed_pixel_output_equals_the_whole_image_output():
  model = pc.CARD.make(num_levels=4, image_shape=(12, 3, 1), filters=8, num_blocks=1,
                       **XLA)
  params = _perturb(_init(model, (12, 3, 1)), 6, 0.1)
  x = jnp.asarray(np.random.default_rng(7).integers(0, 4, (2, 12, 3, 1)), jnp.int32)
  full = jax.jit(lambda x: model.apply({"params": params}, model.scale(x), "xla"))(x)
  full = full.reshape(2, 36, -1)
  window = jax.jit(jax.vmap(lambda i: model.apply(
      {"params": params}, params, x, i, method="window_out"), out_axes=1))
  assert model.receptive_rows + 1 < 12  # windows strictly inside the image
  np.testing.assert_allclose(window(jnp.arange(36)), full, atol=1e-5)


def test_samples_follow_the_model_distribution():
  model = pc.CARD.make(num_levels=4, image_shape=(2, 2, 1), filters=8, num_blocks=1,
                       **XLA)
  params = _perturb(_init(model, (2, 2, 1)), 8, 0.8)
  p = np.exp(np.asarray(_log_prob(model, params, _all_images(4, 2, 2)), np.float64))
  n = 20_000
  samples = jax.jit(lambda k: model.apply({"params": params}, k, n, method="sample"))(
      jax.random.key(9))
  assert samples.dtype == jnp.int32 and samples.shape == (n, 2, 2, 1)
  assert int(samples.min()) >= 0 and int(samples.max()) <= 3
  index = np.asarray(samples).reshape(n, 4) @ (4 ** np.arange(3, -1, -1))
  freq = np.bincount(index, minlength=256) / n
  tv = 0.5 * np.abs(freq - p).sum()
  expected = 0.5 * np.sum(np.sqrt(2 * p * (1 - p) / (np.pi * n)))  # E|noise|
  assert tv < 1.5 * expected + 0.005, (tv, expected)


def test_out_of_range_images_have_log_prob_minus_inf():
  model = pc.CARD.make(num_levels=4, image_shape=(2, 2, 1), filters=8, num_blocks=1,
                       **XLA)
  params = _init(model, (2, 2, 1))
  x = jnp.array([[0, 1, 2, 3], [0, 1, 4, 3], [-1, 0, 0, 0]]).reshape(3, 2, 2, 1)
  lp = _log_prob(model, params, x)
  assert np.isfinite(lp[0]) and np.all(lp[1:] == -np.inf)
  lp = _log_prob(model, params, jnp.array([0, 1.5, 2, 3.0]).reshape(1, 2, 2, 1))
  assert lp[0] == -np.inf


@pytest.mark.parametrize("levels", [4, 256])
def test_im2col_and_xla_convs_give_the_same_log_prob(levels):
  shape = (6, 5, 1)
  x = jnp.asarray(np.random.default_rng(10).integers(0, levels, (3, *shape)), jnp.int32)
  im2col, xla = (pc.CARD.make(num_levels=levels, image_shape=shape, filters=8,
                              num_blocks=2, conv_impl=impl) for impl in ("im2col", "xla"))
  params = _perturb(_init(im2col, shape), 11, 0.1)
  np.testing.assert_allclose(_log_prob(im2col, params, x), _log_prob(xla, params, x),
                             rtol=1e-5)


def test_fifty_adam_steps_lower_the_nll():
  model = pc.CARD.make(num_levels=4, image_shape=(4, 4, 1), filters=8, num_blocks=1,
                       **XLA)
  # Vertical stripes: each pixel copies the one above it (plus 10% noise).
  rng = np.random.default_rng(12)  # numpy: jax.random's threefry compiles for seconds
  top = rng.integers(0, 4, (256, 1, 4, 1))
  noise = rng.integers(0, 4, (256, 4, 4, 1))
  x = jnp.asarray(np.where(rng.random((256, 4, 4, 1)) < 0.9, top, noise), jnp.int32)
  params = _init(model, (4, 4, 1))
  opt = optax.adam(1e-2)
  nll = lambda p: -jnp.mean(_log_prob(model, p, x))

  @jax.jit
  def train(p):  # the engine's form: steps in a lax.scan
    def step(carry, _):
      p, s = carry
      loss, g = jax.value_and_grad(nll)(p)
      u, s = opt.update(g, s, p)
      return (optax.apply_updates(p, u), s), loss
    (p, _), losses = jax.lax.scan(step, (p, opt.init(p)), None, length=50)
    return p, losses

  _, losses = train(params)
  assert float(losses[-1]) < float(losses[0]) - 3.0  # nats an image (of 16 ln 4 = 22)


def test_card_units_and_field_checks():
  card = pc.CARD
  assert (card.name, card.branch, card.family, card.display, card.chapter) == (
      "pixelcnn", "tractable", "autoregressive", "PixelCNN", 5)
  assert card.fixed == ("num_levels", "image_shape")
  assert set(card.default_fields()) == {"filters", "num_blocks", "head",
                                        "num_mixtures", "conv_impl"}
  book = pc.book_sized_unit()
  assert (book.model.filters, book.model.num_blocks) == (128, 5)
  assert book.train.num_steps == 150 * (55_000 // 128)
  assert card.make(num_levels=17).resolved_head() == "logistic_mixture"
  x = jnp.zeros((1, 2, 2, 1), jnp.int32)
  for bad in (dict(head="softmax"), dict(filters=1), dict(conv_impl="fft"),
              dict(num_blocks=0), dict(image_shape=(2, 2, 3))):
    model = card.make(num_levels=4, **{"image_shape": (2, 2, 1), **bad})
    with pytest.raises(UsageError):
      jax.eval_shape(lambda: model.init(jax.random.key(0), x, method="log_prob"))
