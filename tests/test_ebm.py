"""Maths of the energy-based model (genmodels.models.ebm).

* Quadrature: the partition function's rule (composite Gauss-Legendre, the
  model's default 360 x 180 one-degree cells with 2 x 2 nodes) meets its
  proven error bound on truncated Gaussians whose Z is closed form (erf), is
  exact on cubics, and a random network's log_prob integrates to one under
  an independent fine midpoint rule.
* Langevin: on a quadratic energy the unadjusted dynamics have exactly their
  known O(step) variance bias and MALA (with the clamp and the uniform jumps)
  has none, both within stated statistical tolerances.
* Contrastive divergence: the loss's gradient is E_data[grad E] minus
  E_samples[grad E] (the samples are constants), a step down it lowers the
  data's energy and raises the samples', and the replay buffer is rewritten
  exactly where chains were drawn, keeping its shape.
* The engine's conventions: init with the whole training set, the step with
  the mutable buffer, log_prob and sample with {"params": p} only, all jitted.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from genmodels import probability
from genmodels.models import ebm
from genmodels.numerics import langevin, quadrature

LO, HI = (-180.0, -90.0), (180.0, 90.0)
CELLS, NODES = (360, 180), 2  # the model's default rule
# Cramer's inequality: |He_n(t)| exp(-t^2 / 4) <= K sqrt(n!) for the
# probabilists' Hermite polynomials, all n and t.
CRAMER_K = 1.086435
F32_SLACK = 1e-5  # nats: float32 energies and log-sum-exp over 259,200 terms


def _small(**kw):
  return ebm.EnergyModel(**{**dict(hidden=16, depth=2, num_frequencies=4,
                                   buffer_size=512, langevin_steps=5), **kw})


def _box_points(n, seed=0):
  u = np.random.default_rng(seed).uniform(size=(n, 2))
  return (np.asarray(LO) + u * np.subtract(HI, LO)).astype(np.float32)


def _blob(n, seed=1):
  """Data in one corner of the box (far from the uniform buffer)."""
  x = np.random.default_rng(seed).normal([60.0, 30.0], [8.0, 5.0], size=(n, 2))
  return x.astype(np.float32)


def _perturb(params, seed, scale):
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda p: jnp.asarray(np.asarray(p) + scale * rng.normal(size=p.shape), p.dtype),
      params)


# Quadrature -----------------------------------------------------------------


def gl_error_bound_1d(lo, hi, cells, k, mean, std):
  """Proven bound on |integral - rule| for f(x) = exp(-(x - mean)^2 / (2 std^2)).

  On a cell of width h the k-node Gauss-Legendre error is
  h^(2k+1) (k!)^4 / ((2k+1) ((2k)!)^3) f^(2k)(xi) for some xi in the cell, and
  f^(n)(x) = (-1)^n std^-n He_n(t) exp(-t^2/2), t = (x - mean) / std, so
  |f^(n)| <= K sqrt(n!) std^-n exp(-t^2/4) (Cramer), maximal at the cell's
  point nearest the mean.
  """
  h = (hi - lo) / cells
  n = 2 * k
  const = math.factorial(k)**4 / ((2 * k + 1) * math.factorial(n)**3)
  left = lo + h * np.arange(cells)
  t = (np.clip(mean, left, left + h) - mean) / std
  dmax = CRAMER_K * math.sqrt(math.factorial(n)) * std**-n * np.exp(-t**2 / 4)
  return float(np.sum(h**(n + 1) * const * dmax))


def gaussian_integral_1d(lo, hi, mean, std):
  """Exact integral of exp(-(x - mean)^2 / (2 std^2)) over [lo, hi] (erf)."""
  return std * math.sqrt(2 * math.pi) * float(
      special.ndtr((hi - mean) / std) - special.ndtr((lo - mean) / std))


# (mean, std) per axis, degrees: features of 20, 3 and 1 degree, one cut by the
# south edge of the box (a truncated Gaussian), and one finer than a cell.
GAUSSIANS = [((0.0, 0.0), (30.0, 15.0)),
             ((-100.25, -89.0), (3.0, 2.0)),
             ((10.3, 20.7), (1.0, 1.0)),
             ((-33.3, 44.4), (0.5, 0.5))]


@pytest.mark.parametrize("mean,std", GAUSSIANS, ids=["20deg", "3deg-edge", "1deg", "0.5deg"])
def test_quadrature_meets_its_error_bound_on_truncated_gaussians(mean, std):
  energy = lambda x: 0.5 * jnp.sum(((x - jnp.asarray(mean)) / jnp.asarray(std))**2, -1)
  log_q = float(jax.jit(lambda: quadrature.log_integral_box(energy, LO, HI, CELLS, NODES))())
  exact = [gaussian_integral_1d(LO[d], HI[d], mean[d], std[d]) for d in range(2)]
  eps = [gl_error_bound_1d(LO[d], HI[d], CELLS[d], NODES, mean[d], std[d])
         for d in range(2)]
  z = exact[0] * exact[1]
  abs_bound = eps[0] * exact[1] + (exact[0] + eps[0]) * eps[1]  # |Qx Qy - Ix Iy|
  log_bound = -math.log1p(-abs_bound / z) if abs_bound < z else math.inf
  error = abs(log_q - math.log(z))
  print(f"std {std}: |log Q - log Z| = {error:.2e} <= bound {log_bound:.2e}")
  assert error <= log_bound + F32_SLACK
  if min(std) >= 1.0:  # The rule is certified for features of a degree and more:
    assert log_bound < 1e-2  # 1 degree: bound 4e-3 nats; 3 degrees: 5e-5.
  if min(std) >= 3.0:
    assert log_bound < 1e-4


def test_quadrature_is_exact_on_cubics():
  """2 Gauss-Legendre nodes integrate cubics exactly, on any cell grid."""
  def energy(x):
    return -jnp.log((2.0 + (x[:, 0] / 180.0)**3 + 0.5 * (x[:, 0] / 180.0)**2) *
                    (2.0 - (x[:, 1] / 90.0)**3 + (x[:, 1] / 90.0)))
  exact = (2.0 * 360 + 0.5 * 360 / 3) * (2.0 * 180)  # odd terms vanish on the box
  for cells in [(1, 1), (3, 2), CELLS]:
    log_q = float(jax.jit(lambda c=cells: quadrature.log_integral_box(energy, LO, HI, c, 2))())
    assert abs(log_q - math.log(exact)) < F32_SLACK, cells


def test_log_prob_of_a_random_network_integrates_to_one():
  """Independent check: a fine midpoint rule (1024^2 points) of exp(log_prob)."""
  model = _small()
  x = jnp.asarray(_box_points(64))
  params = model.init(jax.random.key(0), x, method="log_prob")["params"]
  params = _perturb(params, 1, 0.7)
  log_prob = jax.jit(lambda p, x: model.apply({"params": p}, x, method="log_prob"))
  e = np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x, method="energy"))(
      params, jnp.asarray(_box_points(20000, seed=3))))
  assert e.max() - e.min() > 4.0  # far from uniform: several nats of contrast
  total = probability.integrate_2d(lambda pts: np.exp(log_prob(params, pts.astype(np.float32))),
                                   LO, HI, num=1024)
  assert abs(total - 1.0) < 1e-3, total


def test_density_is_zero_outside_the_box_and_finite_on_its_edges():
  model = _small()
  params = model.init(jax.random.key(0), jnp.zeros((1, 2)), method="log_prob")["params"]
  pts = jnp.asarray([[-180.0, -90.0], [180.0, 90.0], [0.0, 90.0], [-180.0, 0.0],
                     [180.01, 0.0], [0.0, -90.01], [-200.0, 100.0]], jnp.float32)
  lp = np.asarray(model.apply({"params": params}, pts, method="log_prob"))
  assert np.all(np.isfinite(lp[:4]))
  assert np.all(lp[4:] == -np.inf)
  # A fresh model (zero last layer) is the uniform density on the box.
  np.testing.assert_allclose(lp[:4], -np.log(360.0 * 180.0), atol=1e-5)


# Langevin on a known quadratic energy ------------------------------------------

MEAN, VAR = np.array([0.4, 0.6]), np.array([0.05, 0.08])**2
STEP = 1e-3  # large on purpose: step / (2 var) = 0.2 and 0.078
NUM_CHAINS = 20_000


def _quadratic(u):
  return 0.5 * jnp.sum((u - MEAN)**2 / VAR, -1)


def _run(steps, **kw):
  u0 = jax.random.uniform(jax.random.key(0), (NUM_CHAINS, 2))
  fn = jax.jit(lambda u0, k: langevin.langevin(_quadratic, u0, k, steps, STEP,
                                          math.sqrt(2 * STEP), **kw))
  u, acceptance = fn(u0, jax.random.key(1))
  return np.asarray(u, np.float64), float(acceptance)


def _check_moments(u, var):
  """Mean within 4 standard errors; variance within 4 standard errors
  (var * sqrt(2 / N), 4% at N = 20,000): independent chains, one end each."""
  n = len(u)
  assert np.all(np.abs(u.mean(0) - MEAN) < 4 * np.sqrt(var / n)), (u.mean(0), MEAN)
  assert np.all(np.abs(u.var(0) - var) < 4 * var * np.sqrt(2 / n)), (u.var(0), var)


def test_unadjusted_langevin_has_its_known_step_bias():
  """ULA on N(m, v): u' = u - s (u - m) / v + sqrt(2 s) xi has stationary
  variance v / (1 - s / (2 v)) exactly: 25% too wide on the first axis here,
  which the tolerance (4%) resolves."""
  u, acceptance = _run(600, metropolis=False)
  assert acceptance == 1.0
  _check_moments(u, VAR / (1 - STEP / (2 * VAR)))


@pytest.mark.parametrize("kw", [dict(), dict(grad_clamp=50.0), dict(grad_clamp=50.0, jump_every=4)],
                         ids=["mala", "mala-clamp", "mala-clamp-jumps"])
def test_mala_samples_the_quadratic_exactly(kw):
  """The Metropolis correction removes the bias, with the clamp (active: the
  gradient reaches 240 at the box's edge) and the uniform jumps too."""
  u, acceptance = _run(600, metropolis=True, **kw)
  assert 0.2 < acceptance < 1.0
  assert np.all((u >= 0) & (u <= 1))
  _check_moments(u, VAR)


def test_jumps_need_the_metropolis_correction():
  with pytest.raises(ValueError, match="metropolis"):
    _run(1, metropolis=False, jump_every=4)


# Contrastive divergence and the replay buffer ----------------------------------


def _cd_case(alpha=0.0, **kw):
  model = _small(alpha=alpha, **kw)
  x = jnp.asarray(_blob(128))
  key = jax.random.key(2)
  variables = dict(model.init(key, jnp.asarray(_blob(1000, seed=9)), key,
                              method="training_loss"))
  variables["params"] = _perturb(variables["params"], 4, 0.3)
  return model, variables, x


def _mean_energy_grad(model, params, pts):
  return jax.grad(lambda p: jnp.mean(model.apply({"params": p}, pts, method="energy")))(params)


def _dot(a, b):
  return sum(float(jnp.vdot(x, y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_cd_gradient_lowers_data_energy_and_raises_sample_energy(alpha):
  model, variables, x = _cd_case(alpha)
  rng = jax.random.key(7)

  def loss(params):
    (l, _), _ = model.apply({**variables, "params": params}, x, rng,
                            method="training_loss", mutable=["buffer"])
    return l

  grad = jax.grad(loss)(variables["params"])
  samples, idx, _ = model.apply(variables, x.shape[0], rng, method="negative_samples")
  g_data = _mean_energy_grad(model, variables["params"], x)
  g_samples = _mean_energy_grad(model, variables["params"], samples)
  # The samples are constants: the gradient is E_data[grad E] - E_samples[grad E]
  # (+ alpha times the regulariser's, computed here independently).
  expected = jax.tree.map(lambda a, b: a - b, g_data, g_samples)
  if alpha:
    g_reg = jax.grad(lambda p: jnp.mean(model.apply({"params": p}, x, method="energy")**2) +
                     jnp.mean(model.apply({"params": p}, samples, method="energy")**2)
                     )(variables["params"])
    expected = jax.tree.map(lambda a, b: a + alpha * b, expected, g_reg)
  for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  if alpha == 0.0:
    # First order: a step -eta * grad changes mean E(data) by -eta <g_data, grad>.
    assert _dot(g_data, grad) > 0 and _dot(g_samples, grad) < 0
    step = jax.tree.map(lambda p, g: p - 1e-2 * g, variables["params"], grad)
    energy = lambda p, pts: float(jnp.mean(model.apply({"params": p}, pts, method="energy")))
    assert energy(step, x) < energy(variables["params"], x)
    assert energy(step, samples) > energy(variables["params"], samples)


def test_buffer_is_rewritten_where_chains_were_drawn_and_keeps_its_shape():
  model, variables, x = _cd_case()
  rng = jax.random.key(3)
  old = np.asarray(variables["buffer"]["x"])
  (_, metrics), new_state = jax.jit(
      lambda v, x, r: model.apply(v, x, r, method="training_loss", mutable=["buffer"])
  )(variables, x, rng)
  new = np.asarray(new_state["buffer"]["x"])
  assert set(new_state) == {"buffer"}
  assert new.shape == old.shape == (model.buffer_size, 2) and new.dtype == np.float32
  samples, idx, _ = model.apply(variables, x.shape[0], rng, method="negative_samples")
  idx = np.asarray(idx)
  assert len(set(idx.tolist())) == len(idx)  # distinct slots
  # (the step is jitted, the reference not: equal up to float32 rounding)
  np.testing.assert_allclose(new[idx], np.asarray(samples), atol=1e-3)
  untouched = np.setdiff1d(np.arange(model.buffer_size), idx)
  np.testing.assert_array_equal(new[untouched], old[untouched])
  moved = np.any(np.abs(new[idx] - old[idx]) > 1e-3, -1)
  assert moved.mean() > 0.9  # a chain of 5 steps rarely rejects them all
  assert np.all((new >= LO) & (new <= HI))
  assert 0.0 < float(metrics["acceptance"]) <= 1.0


def test_restarts_are_the_reinit_fraction_of_chains():
  """With 0 Langevin steps, exactly the restarted chains change: ~5% of them."""
  model = _small(buffer_size=4000, langevin_steps=0)
  key = jax.random.key(5)
  x = jnp.asarray(_blob(2000))
  variables = model.init(key, x, key, method="training_loss")
  _, new_state = model.apply(variables, x, jax.random.key(6), method="training_loss",
                             mutable=["buffer"])
  # (a chain's round trip through the unit box moves it by float32 rounding only)
  diff = np.abs(np.asarray(new_state["buffer"]["x"]) - np.asarray(variables["buffer"]["x"]))
  changed = np.any(diff > 1e-3, -1)
  # Binomial(2000, 0.05): mean 100, sd 9.7; 5 sd either side.
  assert 50 < changed.sum() < 150, changed.sum()
  still = _small(buffer_size=4000, langevin_steps=0, reinit_fraction=0.0)
  _, same = still.apply(variables, x, jax.random.key(6), method="training_loss",
                        mutable=["buffer"])
  np.testing.assert_allclose(same["buffer"]["x"], variables["buffer"]["x"], atol=1e-3)


# The engine's conventions --------------------------------------------------------


def test_engine_conventions_init_step_log_prob_and_sample():
  """The engine's own pieces: init on the whole training set, jitted scanned
  train steps threading the buffer as model state, evaluation with the buffer
  present; log_prob and sample jitted with {"params": p} only."""
  from genmodels.density import task  # pylint: disable=g-import-not-at-top
  from genmodels.training import optim, steps  # pylint: disable=g-import-not-at-top

  model = _small()
  train = _blob(3000)
  variables = task.density_init(model, jnp.asarray(train))(jax.random.key(0))
  assert set(variables) == {"params", "buffer"}
  assert variables["buffer"]["x"].shape == (model.buffer_size, 2)
  lp_params = model.init(jax.random.key(0), train[:8], method="log_prob")["params"]
  assert jax.tree.structure(lp_params) == jax.tree.structure(variables["params"])

  tx = optim.make(optim.optimizer_config(name="adamw", learning_rate=1e-3,
                                         schedule="warmup_cosine", warmup_steps=2,
                                         grad_clip=1.0), 6)
  state = steps.create_train_state(variables, tx)
  multi_step = jax.jit(steps.make_multi_step(task.density_loss(model)))
  indices = np.arange(6 * 256).reshape(6, 256)
  new, metrics = multi_step(state, {"x": jnp.asarray(train)}, indices, jax.random.key(1))
  assert bool(np.all(metrics["finite"])) and int(new.step) == 6
  assert {"cd", "e_data", "e_samples", "reg", "acceptance"} <= set(metrics)
  assert new.model_state["buffer"]["x"].shape == (model.buffer_size, 2)
  assert not np.allclose(new.model_state["buffer"]["x"], variables["buffer"]["x"])
  params = new.params

  evaluated = jax.jit(task.density_eval(model))(new.variables, {"x": jnp.asarray(train[:100])})
  log_prob = jax.jit(lambda p, x: model.apply({"params": p}, x, method="log_prob"))
  lp = np.asarray(log_prob(params, jnp.asarray(train[:100])))
  assert lp.shape == (100,) and np.all(np.isfinite(lp))
  np.testing.assert_allclose(-lp, evaluated["nll"], rtol=1e-5)
  sample = jax.jit(lambda p, k: model.apply({"params": p}, k, 500, method="sample"))
  s1, s2 = np.asarray(sample(params, jax.random.key(1))), np.asarray(sample(params, jax.random.key(1)))
  assert s1.shape == (500, 2) and np.all(np.isfinite(s1))
  assert np.all((s1 >= LO) & (s1 <= HI))
  np.testing.assert_array_equal(s1, s2)
  assert not np.array_equal(s1, np.asarray(sample(params, jax.random.key(2))))


# The soft-indicator head and maximum-likelihood training ---------------------------


def test_log_sigmoid_head_is_a_soft_indicator_and_its_density_integrates_to_one():
  """exp(-E) = sigmoid(f) lies in (0, 1); a fresh model is uniform (E = log 2);
  a perturbed one integrates to one under the independent midpoint rule."""
  model = _small(head="log_sigmoid")
  x = jnp.asarray(_box_points(20000, seed=3))
  params = model.init(jax.random.key(0), x[:8], method="log_prob")["params"]
  energy = jax.jit(lambda p, x: model.apply({"params": p}, x, method="energy"))
  np.testing.assert_allclose(energy(params, x), math.log(2.0), rtol=1e-6)
  params = _perturb(params, 1, 0.7)
  e = np.asarray(energy(params, x))
  assert e.min() >= 0.0 and e.max() - e.min() > 2.0
  log_prob = jax.jit(lambda p, x: model.apply({"params": p}, x, method="log_prob"))
  total = probability.integrate_2d(lambda pts: np.exp(log_prob(params, pts.astype(np.float32))),
                                   LO, HI, num=1024)
  assert abs(total - 1.0) < 1e-3, total


def _mle_model_and_params(cells=(128, 64)):
  model = _small(head="log_sigmoid", training="mle", normalizer_cells=cells)
  x = jnp.asarray(_blob(512))
  params = model.init(jax.random.key(0), x, jax.random.key(1),
                      method="training_loss")["params"]
  return model, _perturb(params, 2, 0.7), x


def test_stratified_normalizer_is_unbiased_for_z():
  """The mean of Z-hat over independent draws is the quadrature Z within four
  standard errors of that mean (each draw's relative error: about 2% at
  16 x 32 cells)."""
  model, params, _ = _mle_model_and_params(cells=(32, 16))
  log_z = float(model.apply({"params": params}, method="log_normalizer"))
  log_z_hat = jax.jit(jax.vmap(lambda k: model.apply(
      {"params": params}, k, method="stratified_log_normalizer")))
  z_hat = np.exp(np.asarray(log_z_hat(jax.random.split(jax.random.key(3), 400)),
                            np.float64) - log_z)
  assert z_hat.std() > 1e-4  # a stochastic estimate, not the quadrature again
  assert abs(z_hat.mean() - 1.0) < 4 * z_hat.std() / math.sqrt(len(z_hat)), z_hat.mean()


def test_mle_loss_and_gradient_are_the_exact_nll_s():
  """training="mle": the loss is within the estimate's noise of the exact NLL
  (quadrature log Z), its parameter gradient within 1% of the exact NLL's
  gradient (measured: 0.1%); there is no replay buffer."""
  model, params, x = _mle_model_and_params()
  assert "buffer" not in model.init(jax.random.key(0), x, jax.random.key(1),
                                    method="training_loss")
  loss = lambda p, k: model.apply({"params": p}, x, k, method="training_loss")[0]
  exact = lambda p: -jnp.mean(model.apply({"params": p}, x, method="log_prob"))
  value, grad = jax.jit(jax.value_and_grad(loss))(params, jax.random.key(4))
  exact_value, exact_grad = jax.jit(jax.value_and_grad(exact))(params)
  assert abs(float(value) - float(exact_value)) < 0.005
  g, eg = (np.concatenate([np.ravel(v) for v in jax.tree.leaves(t)])
           for t in (grad, exact_grad))
  assert np.linalg.norm(g - eg) < 0.01 * np.linalg.norm(eg)


@pytest.mark.parametrize("field,value", [("head", "sigmoid"), ("training", "ml")])
def test_unknown_head_or_training_is_refused(field, value):
  with pytest.raises(ValueError, match=field):
    _small(**{field: value}).init(jax.random.key(0), jnp.zeros((2, 2)), method="log_prob")


# The cached normaliser ------------------------------------------------------------


def test_cached_log_z_is_the_quadratures_and_log_prob_reads_it():
  """``with_normalizers`` stores the quadrature's log Z; log_prob with it gives
  the same values, and reads it (a shifted cache shifts log_prob by exactly as
  much); new parameters get a new log Z, not the stale one."""
  from genmodels import models  # pylint: disable=g-import-not-at-top
  model = _small()
  x = jnp.asarray(np.concatenate([_box_points(50), [[200.0, 0.0]]]).astype(np.float32))
  params = model.init(jax.random.key(0), x, method="log_prob")["params"]
  params = _perturb(params, 2, 0.7)
  cache = jax.jit(lambda v: models.with_normalizers(model, v))
  log_prob = jax.jit(lambda v, x: model.apply(v, x, method="log_prob"))
  log_z = jax.jit(lambda p: model.apply({"params": p}, method="log_normalizer"))

  cached = cache({"params": params})
  assert set(cached) == {"params", "normalizer"}
  np.testing.assert_allclose(cached["normalizer"]["log_z"], log_z(params), rtol=1e-6)
  plain = np.asarray(log_prob({"params": params}, x))
  np.testing.assert_allclose(log_prob(cached, x), plain, rtol=1e-6)
  assert plain[-1] == -np.inf  # outside the box, with or without the cache
  shifted = {**cached, "normalizer": {"log_z": cached["normalizer"]["log_z"] + 1.5}}
  np.testing.assert_allclose(log_prob(shifted, x)[:-1], plain[:-1] - 1.5, rtol=1e-6)

  params2 = _perturb(params, 3, 0.7)
  recached = cache({**shifted, "params": params2})
  np.testing.assert_allclose(recached["normalizer"]["log_z"], log_z(params2), rtol=1e-6)
  assert abs(float(log_z(params2)) - float(log_z(params))) > 0.01  # a real change
