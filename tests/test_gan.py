"""The GAN (genmodels.models.gan): the two-part loss, R1, samples, no density.

The engine takes one gradient of ``training_loss`` with respect to all the
parameters; these tests check that the generator's part of that gradient is the
gradient of the generator's objective alone, and the discriminator's part that
of the discriminator's, each computed here separately from the submodules.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import stats

from genmodels.density import task
from genmodels.models import gan
from genmodels.models import gan_networks
from genmodels.training import optim
from genmodels.training import steps

LO, HI = (-180.0, -90.0), (180.0, 90.0)
BATCH = 64


def _points(n, seed=0):
  rng = np.random.default_rng(seed)
  lo, hi = np.asarray(LO), np.asarray(HI)
  return jnp.asarray(lo + (hi - lo) * rng.beta(2.0, 3.0, size=(n, 2)), jnp.float32)


def _perturb(params, seed, scale):
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda p: jnp.asarray(np.asarray(p) + scale * rng.normal(size=np.shape(p)), p.dtype),
      params)


@functools.cache
def _model(r1_weight=0.5, coarse_to_fine_steps=0):
  model = gan.GAN(noise_dim=3, generator_hidden=16, generator_depth=2,
                  generator_frequencies=3, generator_quantiles=16,
                  discriminator_hidden=16, discriminator_depth=2,
                  discriminator_frequencies=3, r1_weight=r1_weight, box_weight=2.0,
                  coarse_to_fine_steps=coarse_to_fine_steps,
                  rejection_quantile=0.0)  # the generator's own samples
  x_all = _points(3000)
  key = jax.random.key(0)
  variables = jax.jit(model.init, static_argnames="method")(
      key, x_all, key, method="training_loss")
  # Non-trivial generator (its last layer starts at zero) and discriminator.
  params = _perturb(variables["params"], 1, 0.3)
  return model, x_all, variables, params


def _generate(model, g_params, eps):
  """G's raw output (before folding into the box)."""
  return model.apply({"params": {"generator": g_params}}, eps,
                     method=lambda m, e: m.generator(e))


def _discriminate(model, d_params, u):
  return model.apply({"params": {"discriminator": d_params}}, u,
                     method=lambda m, u: m.discriminator(u))


def test_params_have_exactly_two_parts():
  _, _, variables, _ = _model()
  assert set(variables) == {"params"}
  assert set(variables["params"]) == {"generator", "discriminator"}


@pytest.mark.parametrize("r1_weight", [0.0, 0.5])
def test_each_part_gets_the_gradient_of_its_own_objective(r1_weight):
  model, x_all, _, params = _model(r1_weight)
  x, rng = x_all[:BATCH], jax.random.key(3)
  total = jax.grad(lambda p: model.apply({"params": p}, x, rng,
                                         method="training_loss")[0])(params)
  eps = jax.random.normal(rng, (BATCH, model.noise_dim))
  real = model.to_unit(x)
  g_params, d_params = params["generator"], params["discriminator"]
  raw = _generate(model, g_params, eps)
  assert float(jnp.mean(gan.box_excess(raw))) > 0  # the box penalty is exercised
  fake = gan.fold_into_box(raw)

  def d_objective(dp):  # the fakes are constants here
    lr, lf = _discriminate(model, dp, real), _discriminate(model, dp, fake)
    grads = jax.vmap(jax.grad(lambda u: _discriminate(model, dp, u[None])[0]))(real)
    r1 = jnp.mean(jnp.sum(grads ** 2, -1))
    return (jnp.mean(jax.nn.softplus(-lr)) + jnp.mean(jax.nn.softplus(lf))
            + 0.5 * r1_weight * r1)

  def g_objective(gp):  # the discriminator is a constant here
    y = _generate(model, gp, eps)
    outside = jnp.sum(jnp.maximum(jnp.abs(y) - 1.0, 0.0) ** 2, -1)
    return (jnp.mean(jax.nn.softplus(-_discriminate(model, d_params,
                                                    gan.fold_into_box(y))))
            + model.box_weight * jnp.mean(outside))

  want = {"discriminator": jax.grad(d_objective)(d_params),
          "generator": jax.grad(g_objective)(g_params)}
  for part in ("generator", "discriminator"):
    norm = optax_norm(want[part])
    assert norm > 1e-3, part  # a real gradient, not a vacuous match
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4,
                                                         atol=2e-6 * norm),
                 total[part], want[part])
  # And the loss's value is the sum of the two objectives.
  loss, metrics = model.apply({"params": params}, x, rng, method="training_loss")
  np.testing.assert_allclose(float(loss), float(d_objective(d_params) + g_objective(g_params)),
                             rtol=1e-5)
  np.testing.assert_allclose(float(metrics["d_loss"] + metrics["g_loss"]), float(loss),
                             rtol=1e-6)


def optax_norm(tree):
  return float(np.sqrt(sum(np.sum(np.asarray(v, np.float64) ** 2)
                           for v in jax.tree.leaves(tree))))


def test_r1_penalty_matches_finite_differences():
  model, x_all, _, params = _model()
  d_params = params["discriminator"]
  real = model.to_unit(x_all[:16])
  d = lambda p, u: _discriminate(model, p, u)
  got = float(gan.r1_penalty(d, d_params, real))
  # Central differences in float64 arithmetic on float32 evaluations.
  h = 1e-2
  grads = np.zeros((16, 2))
  for i in range(2):
    step = np.zeros(2, np.float32)
    step[i] = h
    up = np.asarray(d(d_params, real + step), np.float64)
    down = np.asarray(d(d_params, real - step), np.float64)
    grads[:, i] = (up - down) / (2 * h)
  want = float(np.mean(np.sum(grads ** 2, -1)))
  assert want > 1e-2
  np.testing.assert_allclose(got, want, rtol=2e-2)
  # And the penalty enters the discriminator's loss as r1_weight / 2 * R1.
  fake = real[::-1]
  with_r1, metrics = gan.discriminator_loss(d, d_params, real, fake, 0.5)
  without, _ = gan.discriminator_loss(d, d_params, real, fake, 0.0)
  np.testing.assert_allclose(float(with_r1 - without), 0.25 * got, rtol=1e-4)
  np.testing.assert_allclose(float(metrics["r1"]), got, rtol=1e-5)


def test_fold_into_box():
  y = jnp.array([[0.3, 0.3], [1.25, 1.25], [-1.5, -1.5], [3.5, 2.5], [-0.999, 3.0]])
  want = np.array([[0.3, 0.3], [-0.75, 0.75], [0.5, -0.5], [-0.5, -0.5], [-0.999, -1.0]])
  np.testing.assert_allclose(np.asarray(gan.fold_into_box(y)), want, atol=1e-6)
  np.testing.assert_allclose(np.asarray(gan.box_excess(y)),
                             [0, 2 * 0.25 ** 2, 2 * 0.5 ** 2, 2.5 ** 2 + 1.5 ** 2, 4.0],
                             rtol=1e-6)


def test_samples_have_the_right_shape_and_stay_in_the_box():
  model, x_all, variables, params = _model()
  sample = jax.jit(lambda p, k: model.apply({"params": p}, k, 5000, method="sample"))
  for p in (variables["params"], params):
    s = np.asarray(sample(p, jax.random.key(0)))
    assert s.shape == (5000, 2) and s.dtype == np.float32
    assert np.all(s >= np.asarray(LO)) and np.all(s <= np.asarray(HI))
  # A fresh generator samples the product of the training data's marginals.
  s = np.asarray(sample(variables["params"], jax.random.key(1)), np.float64)
  for i in range(2):
    assert stats.ks_2samp(s[:, i], np.asarray(x_all[:, i])).pvalue > 1e-3


def test_rejection_sampling_keeps_more_of_what_the_discriminator_scores_high():
  """With rejection_quantile > 0, sample keeps G's points by D's logit: the
  samples' mean logit rises above the generator's own, all in the box."""
  model, _, _, params = _model()
  logit = lambda x: np.asarray(model.apply({"params": params}, jnp.asarray(x)))
  draws = {}
  for q in (0.0, 0.999):
    m = model.clone(rejection_quantile=q)
    draws[q] = np.asarray(jax.jit(lambda p, k: m.apply({"params": p}, k, 20_000,
                                                       method="sample"))(params, jax.random.key(4)))
    assert draws[q].shape == (20_000, 2)
    assert np.all(draws[q] >= np.asarray(LO)) and np.all(draws[q] <= np.asarray(HI))
  plain, kept = logit(draws[0.0]), logit(draws[0.999])
  # Kept with probability exp(D - M): the kept points' logits sit higher by
  # about Var(D) for a narrow spread of D (the tilted mean).
  assert kept.mean() - plain.mean() > 0.5 * plain.var(), (kept.mean(), plain.mean(), plain.var())


def test_log_prob_raises_a_one_line_value_error():
  model, x_all, variables, _ = _model()
  with pytest.raises(ValueError, match="implicit model: it has no log_prob") as err:
    model.apply(variables, x_all[:4], method="log_prob")
  assert "\n" not in str(err.value)


def test_the_engine_trains_both_parts_with_their_own_optimizers():
  model, x_all, variables, _ = _model()
  cfg = ml_collections.ConfigDict({
      "generator": optim.optimizer_config(name="adam", learning_rate=1e-3),
      "discriminator": optim.optimizer_config(name="adam", learning_rate=3e-3)})
  optim.check(cfg)
  tx = optim.make(cfg, 20)
  state = steps.create_train_state(variables, tx)
  multi = jax.jit(steps.make_multi_step(task.density_loss(model)))
  idx = jnp.asarray(np.random.default_rng(0).integers(0, len(x_all), (20, BATCH)))
  new_state, metrics = multi(state, {"x": x_all}, idx, jax.random.key(2))
  assert bool(np.all(metrics["finite"]))
  assert {"d_loss", "g_loss", "r1", "d_real", "d_fake", "d_accuracy"} <= set(metrics)
  for part in ("generator", "discriminator"):
    moved = jax.tree.leaves(jax.tree.map(
        lambda a, b: float(jnp.max(jnp.abs(a - b))), new_state.params[part],
        state.params[part]))
    assert max(moved) > 0, part


def test_coarse_to_fine_schedule_counts_steps_and_fades_frequencies_in():
  w = np.asarray(gan_networks.frequency_weights(6, 2.5))
  np.testing.assert_allclose(w, [1, 1, 0.5, 0, 0, 0], atol=1e-6)
  model, x_all, variables, _ = _model(coarse_to_fine_steps=4)
  assert set(variables) == {"params", "schedule"}
  assert set(variables["params"]) == {"generator", "discriminator"}
  tx = optim.make(ml_collections.ConfigDict({
      "generator": optim.optimizer_config(learning_rate=1e-3),
      "discriminator": optim.optimizer_config(learning_rate=3e-3)}), 6)
  state = steps.create_train_state(variables, tx)
  multi = jax.jit(steps.make_multi_step(task.density_loss(model)))
  idx = jnp.asarray(np.random.default_rng(0).integers(0, len(x_all), (6, BATCH)))
  new_state, metrics = multi(state, {"x": x_all}, idx, jax.random.key(2))
  assert int(new_state.model_state["schedule"]["counter"]["step"]) == 6
  k = model.discriminator_frequencies
  want = [gan.COARSE_START + (k - gan.COARSE_START) * min(i / 4, 1) for i in range(6)]
  np.testing.assert_allclose(metrics["frequency_level"], want, rtol=1e-6)
  # At level 2 the discriminator ignores frequency 3: changing the first layer's
  # weights on that frequency's features changes nothing.
  d_params = variables["params"]["discriminator"]
  kernel = np.asarray(d_params["Dense_0"]["kernel"]).copy()
  d = 2  # coordinates; features are [u (2), sin (2 k), cos (2 k)], per coordinate
  rows = [d + c * k + 2 for c in range(2)] + [d + 2 * k + c * k + 2 for c in range(2)]
  kernel[rows] += 1.0
  changed = {**d_params, "Dense_0": {**d_params["Dense_0"], "kernel": jnp.asarray(kernel)}}
  u = model.to_unit(x_all[:32])
  apply = lambda p, level: model.apply({"params": {"discriminator": p}}, u,
                                       method=lambda m, u: m.discriminator(u, level))
  np.testing.assert_allclose(apply(changed, 2.0), apply(d_params, 2.0), atol=1e-6)
  assert np.max(np.abs(apply(changed, 3.0) - apply(d_params, 3.0))) > 1e-3
  # Scoring (parameters only) sees every frequency and does not need the counter.
  logits = model.apply({"params": variables["params"]}, x_all[:8])
  assert logits.shape == (8,)


def test_interp_uniform_matches_numpy_interp():
  knots = jnp.asarray(np.sort(np.random.default_rng(0).normal(size=(3, 9)), -1),
                      jnp.float32)
  p = jnp.asarray(np.random.default_rng(1).uniform(-0.1, 1.1, 500), jnp.float32)
  grid = np.linspace(0.0, 1.0, 9)
  np.testing.assert_allclose(gan_networks.interp_uniform(p, knots[1]),
                             np.interp(p, grid, knots[1]), atol=1e-6)
  row = jnp.asarray(np.arange(500) % 3)
  want = [np.interp(p[i], grid, knots[int(row[i])]) for i in range(500)]
  np.testing.assert_allclose(gan_networks.interp_uniform(p, knots, row), want, atol=1e-6)


def test_banded_generator_starts_at_the_datas_coarse_joint_distribution():
  """With bands, a fresh G samples latitude from its marginal and longitude from
  its distribution within each equal-mass band of latitude."""
  bands = 4
  model = gan.GAN(generator_hidden=8, generator_depth=1, generator_blocks=1,
                  generator_frequencies=2, generator_quantiles=64,
                  generator_bands=bands, discriminator_hidden=8,
                  discriminator_depth=1, discriminator_frequencies=2,
                  rejection_quantile=0.0)  # the generator's own start
  rng = np.random.default_rng(0)
  lat = rng.uniform(-60.0, 60.0, 20000)
  lon = np.where(lat > 0, rng.normal(-90, 10, lat.size), rng.normal(60, 20, lat.size))
  x = jnp.asarray(np.stack([lon, lat], -1), jnp.float32)
  variables = jax.jit(model.init, static_argnames="method")(
      jax.random.key(0), x, jax.random.key(0), method="training_loss")
  assert jax.tree.map(jnp.shape, variables["params"]["generator"])["lon_quantiles"] == (
      bands, 65)
  s = np.asarray(jax.jit(lambda v, k: model.apply(v, k, 20000, method="sample"))(
      {"params": variables["params"]}, jax.random.key(1)), np.float64)
  assert stats.ks_2samp(s[:, 1], lat).pvalue > 1e-3
  edges = np.quantile(lat, np.linspace(0, 1, bands + 1))
  for b in range(bands):
    lo_, hi_ = edges[b], edges[b + 1]
    got = s[(s[:, 1] > lo_ + 1) & (s[:, 1] < hi_ - 1), 0]
    want = lon[(lat > lo_ + 1) & (lat < hi_ - 1)]
    assert stats.ks_2samp(got, want).pvalue > 1e-3, b
  # Not the product of the marginals: longitude depends on the hemisphere.
  assert np.mean(s[s[:, 1] > 1, 0]) < -60 and np.mean(s[s[:, 1] < -1, 0]) > 30
  # Fewer points than bands (a shapes-only init, as load_density's) still works.
  assert gan_networks.band_knots(x[:3] / 180.0, 4, 8).shape == (8, 5)
