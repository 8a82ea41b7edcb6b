"""The multiscale RealNVP image flow against maths: exact inverses, log-dets
equal to slogdet of the Jacobian, uniform dequantization's bound against cell
masses integrated by Gauss-Legendre quadrature, and a sampler that draws the
clipped cell masses."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from genmodels.errors import UsageError
from genmodels.images import flow
from genmodels.models import base


def tiny(shape, num_levels=4, **kw):
  kw = {"num_scales": 2, "num_steps_per_level": 2, "hidden": 8, **kw}
  return flow.CARD.make(num_levels=num_levels, image_shape=shape, **kw)


_VARIABLES = {}  # the tests share their inits (each costs a compile)


def init_perturbed(model, key=0, scale=0.2, n=16):
  """Variables started from random images, then every parameter moved by
  N(0, scale^2) so that no coupling is the identity and no mixing a permutation."""
  cache = (repr(model), key, scale, n)
  if cache in _VARIABLES:
    return _VARIABLES[cache]
  k_x, k_i, k_p = jax.random.split(jax.random.key(key), 3)
  x = jax.random.randint(k_x, (n, *model.image_shape), 0, model.num_levels)
  params = jax.jit(lambda k: base.init_variables(model, k, x))(k_i)["params"]
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(k_p, len(leaves))
  moved = [p + scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]
  _VARIABLES[cache] = {"params": jax.tree.unflatten(tree, moved)}
  return _VARIABLES[cache]


@pytest.mark.parametrize("shape,steps", [
    pytest.param((4, 4, 1), 2, marks=pytest.mark.slow), ((8, 8, 1), 1)])
def test_inverse_undoes_forward(shape, steps):
  model = tiny(shape, num_steps_per_level=steps)
  variables = init_perturbed(model)
  y = jax.random.uniform(jax.random.key(1), (8, *shape))

  @jax.jit
  def round_trips(v, y):
    z, _ = model.apply(v, y, method="forward")
    w, _ = model.apply(v, y, method="logit")
    zw, _ = model.apply(v, w, method="bijection")
    return (z, model.apply(v, z, method="inverse"),
            model.apply(v, zw, method="bijection_inverse"), w)

  z, y_back, w_back, w = round_trips(variables, y)
  assert z.shape == (8, math.prod(shape))
  assert float(jnp.std(z - jnp.reshape(w, (8, -1)))) > 0.05  # not the identity
  np.testing.assert_allclose(y_back, y, atol=2e-5)
  np.testing.assert_allclose(w_back, w, atol=1e-4)


def test_log_det_is_slogdet_of_the_jacobian():
  """log |det dz/dy| of the whole map (logit included) and of the bijection
  alone equal slogdet(jax.jacfwd) of the flattened map, on 4x4x1 (D = 16)."""
  shape = (4, 4, 1)
  model = tiny(shape)
  v = init_perturbed(model)
  y = jax.random.uniform(jax.random.key(3), (1, *shape))
  w, _ = model.apply(v, y, method="logit")

  def check(method, point):
    f = lambda p: model.apply(v, p.reshape(1, *shape), method=method)[0][0]
    jac = jax.jit(jax.jacfwd(f))(point.reshape(-1))
    sign, expected = jnp.linalg.slogdet(jac)
    _, logdet = model.apply(v, point, method=method)
    assert sign != 0
    np.testing.assert_allclose(logdet[0], expected, rtol=1e-4, atol=2e-3)
    return float(expected)

  whole, alone = check("forward", y), check("bijection", w)
  assert abs(whole - alone) > 1.0  # the logit's log-det is in the whole map's


def _gauss_legendre(lo, hi, n):
  nodes, weights = np.polynomial.legendre.leggauss(n)
  return lo + (hi - lo) * (nodes + 1) / 2, weights * (hi - lo) / 2


def test_dequantized_bound_against_quadrature():
  """On 2x2x1 images with K = 2 levels (16 cells, D = 4), with 8^4-point
  Gauss-Legendre quadrature per cell:

  * the clipped cell masses (edge cells reaching the logit's support,
    (-a', 1 + a'), as sample() clips) sum to 1, and the unit-box cells
    P(x) = int_cell p_y to at most that;
  * the Jensen bound E_u[log p_y((x + u)/K)] - D log K <= log P(x);
  * log_prob is the mean over its draws u_s of log p_y((x + u_s)/K) - D log K
    (so its bits/dim are the continuous NLL of x + u in bits/dim on [0, K)),
    and with many draws it is the quadrature's bound within Monte Carlo error;
  * sample() draws the clipped masses.
  """
  k, shape = 2, (2, 2, 1)
  model = tiny(shape, num_levels=k, num_scales=1, num_dequant_samples=4,
               num_steps_per_level=1)
  v = init_perturbed(model, key=4, scale=0.1)
  d, a = 4, model.alpha / (1 - 2 * model.alpha)
  cells = np.array(list(itertools.product(range(k), repeat=d)))  # [16, 4]
  log_p = jax.jit(lambda y: model.apply(v, y.reshape(-1, *shape),
                                        method="continuous_log_prob"))

  def cell_integrals(clipped):
    nodes, weights = [], []
    for level in range(k):
      lo = -a if clipped and level == 0 else level / k
      hi = 1 + a if clipped and level == k - 1 else (level + 1) / k
      nodes.append(_gauss_legendre(lo, hi, 8))
    out = []
    for cell in cells:  # product rule over the 4 pixels
      grids = np.meshgrid(*[nodes[c][0] for c in cell], indexing="ij")
      wts = np.prod(np.meshgrid(*[nodes[c][1] for c in cell], indexing="ij"), 0)
      lp = np.asarray(log_p(jnp.asarray(np.stack([g.ravel() for g in grids], -1))))
      out.append((np.sum(wts.ravel() * np.exp(lp)),
                  np.sum(wts.ravel() * lp) * k ** d - d * math.log(k)))
    return np.array(out)

  clipped_mass = cell_integrals(True)[:, 0]
  mass, jensen = cell_integrals(False).T
  assert abs(clipped_mass.sum() - 1) < 2e-3
  assert 0.8 < mass.sum() <= clipped_mass.sum() + 1e-6
  assert np.all(mass <= clipped_mass + 1e-7)
  assert np.all(jensen <= np.log(mass))

  x = jnp.asarray(cells.reshape(-1, *shape), jnp.int32)
  lp = model.apply(v, x, method="log_prob")
  u = model.apply(v, x.reshape(16, -1), method="dequant_noise")  # [S, N, D]
  again = log_p((x.reshape(1, 16, -1) + u) / k).reshape(u.shape[:2])
  np.testing.assert_allclose(lp, jnp.mean(again, 0) - d * math.log(k), rtol=1e-5)

  many = model.clone(num_dequant_samples=512)
  log_w = many.apply(v, x, method="_log_weights")[0]
  se = jnp.std(log_w, 0) / math.sqrt(512)
  assert np.all(np.abs(jnp.mean(log_w, 0) - jensen) < 5 * se + 1e-3)

  n = 20_000
  draws = np.asarray(model.apply(v, jax.random.key(5), n, method="sample")).reshape(n, -1)
  freq = np.array([(draws @ (k ** np.arange(d)) == c @ (k ** np.arange(d))).mean()
                   for c in cells])
  assert np.all(np.abs(freq - clipped_mass)
                < 5 * np.sqrt(clipped_mass * (1 - clipped_mass) / n) + 1e-3)


@pytest.mark.slow  # a training run / many compiles: the slow tier (.ci/run)
def test_samples_determinism_and_out_of_range():
  shape, k = (4, 4, 1), 4
  model = tiny(shape, num_levels=k, num_steps_per_level=1)
  v = init_perturbed(model)
  s = jax.jit(lambda v: model.apply(v, jax.random.key(7), 10, method="sample"))(v)
  assert s.dtype == jnp.int32 and s.shape == (10, *shape)
  assert int(s.min()) >= 0 and int(s.max()) < k

  x = jax.random.randint(jax.random.key(8), (6, *shape), 0, k)
  lp = jax.jit(lambda v, x: model.apply(v, x, method="log_prob"))
  first, second = lp(v, x), lp(v, x)
  np.testing.assert_array_equal(first, second)
  # A function of the image alone: the same number in another batch.
  np.testing.assert_allclose(lp(v, x[::-1])[::-1], first, rtol=1e-6)
  metric_fn = jax.jit(lambda v, x: model.apply(v, x, method="eval_metrics"))
  metrics = metric_fn(v, x)
  np.testing.assert_allclose(metrics["nll"], -first, rtol=1e-6)
  assert np.all(metrics["iw_nll"] <= metrics["nll"] + 1e-4)

  bad = jnp.concatenate([x[:1].at[0, 0, 0, 0].set(k), x[:1].at[0, 1, 1, 0].set(-1)])
  assert np.all(lp(v, bad) == -np.inf)
  half = x[:2].astype(jnp.float32).at[0, 0, 0, 0].set(0.5)
  assert float(lp(v, half)[0]) == -np.inf and np.isfinite(float(lp(v, half)[1]))
  assert np.all(metric_fn(v, jnp.concatenate([bad] * 3))["nll"] == np.inf)


@pytest.mark.slow  # a training run / many compiles: the slow tier (.ci/run)
def test_training_lowers_the_bound():
  shape, k = (4, 4, 1), 4
  model = tiny(shape, num_levels=k, num_steps_per_level=1)
  rng = np.random.default_rng(0)
  pattern = np.arange(16).reshape(4, 4, 1) % k  # structure plus flips
  x = np.where(rng.random((64, *shape)) < 0.2, rng.integers(0, k, (64, *shape)), pattern)
  x = jnp.asarray(x, jnp.int32)
  variables = jax.jit(lambda r: base.init_variables(model, r, x))(jax.random.key(0))
  opt = optax.adam(3e-3)

  @jax.jit
  def run(params, key):
    def step(carry, key):
      params, state = carry
      grads = jax.grad(lambda p: model.apply({"params": p}, x, key,
                                             method="training_loss")[0])(params)
      updates, state = opt.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), None
    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)),
                                  jax.random.split(key, 50))
    return params

  nll = lambda p: -jnp.mean(model.apply({"params": p}, x, method="log_prob"))
  before = float(nll(variables["params"]))
  after = float(nll(run(variables["params"], jax.random.key(1))))
  assert after < before - 0.1 * 16  # 0.1 nats per dimension at least


def test_card_and_field_checks():
  card = flow.CARD
  assert (card.name, card.branch, card.family, card.chapter) == (
      "realnvp_image", "tractable", "normalizing flow", 6)
  assert card.fixed == ("num_levels", "image_shape")
  assert flow.RealNVPImage.log_prob_is_bound and not flow.RealNVPImage.trains_by_nll
  x = jnp.zeros((2, 28, 28, 1), jnp.int32)
  for unit in (card.unit(), flow.book_sized_unit()):
    model = card.make(num_levels=256, image_shape=(28, 28, 1), **unit.model.to_dict())
    jax.eval_shape(lambda: model.init(jax.random.key(0), x, method="log_prob"))
  for bad in (dict(image_shape=(6, 6, 1)), dict(dequantization="variational"),
              dict(alpha=0.5), dict(mixing="shuffle"), dict(conv_impl="fft"),
              dict(hidden=0)):
    model = card.make(**{"num_levels": 4, "image_shape": (8, 8, 1), **bad})
    with pytest.raises(UsageError):
      jax.eval_shape(lambda: model.init(jax.random.key(0), x[:, :8, :8],
                                        method="log_prob"))
