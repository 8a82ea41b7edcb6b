"""Continuous-time models (chapter 8): the ODE likelihood, flow matching, diffusion.

The ODE likelihood (genmodels.numerics.ode) is checked against flows known in
closed form: a time-dependent linear field, whose flow maps N(0, I) to a known
Gaussian, and the exact flow-matching velocity and the exact diffusion noise
predictor of Gaussian data (whose marginals are Gaussian at every time). The
exact divergence is checked against jax.jacrev and finite differences. Small
models are trained for a few hundred steps on three Gaussian blobs to show the
losses fall, the likelihood converges in the ODE step count, exp(log_prob)
integrates to 1, and the samplers land on the data.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import linalg, stats

from genmodels import probability
from genmodels.models import continuous
from genmodels.numerics import features, ode

MODELS = {"flow_matching": continuous.FlowMatching, "diffusion": continuous.Diffusion}
TINY = dict(hidden=32, depth=2, num_frequencies=4, max_frequency=4.0, time_frequencies=4)
# Three blobs in degrees: centres and standard deviations.
CENTRES = np.array([[-60.0, 20.0], [40.0, -10.0], [100.0, 40.0]])
STDS = np.array([12.0, 8.0, 10.0])


def _blobs(n, seed):
  rng = np.random.default_rng(seed)
  k = rng.integers(0, 3, n)
  return (CENTRES[k] + STDS[k, None] * rng.normal(size=(n, 2))).astype(np.float32)


def _blobs_log_prob(x):
  comp = [stats.multivariate_normal(c, s**2).logpdf(x) for c, s in zip(CENTRES, STDS)]
  return np.logaddexp.reduce(np.stack(comp), axis=0) - np.log(3)


# ---------------------------------------------------------------------------
# The ODE likelihood on a flow known in closed form.


def test_ode_log_prob_of_time_dependent_linear_flow():
  """v(x, t) = g(t) A (x - m(t)) + m'(t) carries N(0, I) at t=0 to a known Gaussian.

  With y = x - m(t): y' = g(t) A y, so y_1 = expm(G A) y_0 with G = int_0^1 g.
  Hence x_1 ~ N(m(1) - M m(0), M M^T), M = expm(G A); A is not symmetric.
  """
  a = jnp.array([[0.3, -1.1], [0.7, -0.5]])
  g = lambda t: 1.0 + 0.5 * jnp.sin(3.0 * t)
  big_g = 1.0 + 0.5 * (1.0 - np.cos(3.0)) / 3.0
  m = lambda t: jnp.array([jnp.cos(2.0 * t), t**2])
  dm = lambda t: jnp.array([-2.0 * jnp.sin(2.0 * t), 2.0 * t])

  def field(x, t):
    return g(t) * (x - m(t)) @ a.T + dm(t)

  mat = linalg.expm(big_g * np.asarray(a, np.float64))
  mean = np.array([np.cos(2.0), 1.0]) - mat @ np.array([1.0, 0.0])
  cov = mat @ mat.T
  x = stats.multivariate_normal(mean, cov).rvs(200, random_state=0).astype(np.float32)
  expected = stats.multivariate_normal(mean, cov).logpdf(x)

  times = ode.power_grid(1.0, 0.0, 64, power=1.5)
  got = jax.jit(lambda x: ode.log_prob(field, x, times, ode.standard_normal_log_prob))(x)
  np.testing.assert_allclose(np.asarray(got), expected, atol=2e-4)
  # The divergence term alone is -G tr(A) (log det of the inverse map).
  _, delta = ode.integrate_with_divergence(field, jnp.asarray(x), times)
  np.testing.assert_allclose(np.asarray(delta), -big_g * np.trace(a), atol=1e-4)
  # And the forward map: noise at t=0 -> x_1 = m(1) + M (z - m(0)).
  z = np.random.default_rng(1).normal(size=(50, 2)).astype(np.float32)
  x1 = ode.integrate(field, jnp.asarray(z), times[::-1])
  np.testing.assert_allclose(np.asarray(x1), mean + z @ mat.T, atol=1e-4)


def test_exact_divergence_matches_jacrev_and_finite_differences():
  net = continuous.TimeField(hidden=16, depth=3, num_frequencies=3, max_frequency=3.0,
                             time_frequencies=2)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(32, 2)), jnp.float32)
  params = net.init(jax.random.key(0), x, jnp.zeros(32))
  # Random, non-trivial weights (the last layer starts at zero).
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(tree, [
      p + 0.5 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
  field = lambda v, t: net.apply(params, v, jnp.full(v.shape[:1], t))
  t = jnp.float32(0.37)
  f = jax.jit(lambda x: field(x, t))

  v, div = jax.jit(lambda x: ode.velocity_and_divergence(field, x, t))(x)
  np.testing.assert_allclose(np.asarray(v), np.asarray(f(x)), rtol=1e-6, atol=1e-6)
  # Independent: reverse mode, one point at a time.
  jac = jax.vmap(jax.jacrev(lambda xi: field(xi[None], t)[0]))(x)
  np.testing.assert_allclose(np.asarray(div), np.trace(np.asarray(jac), axis1=1, axis2=2),
                             rtol=1e-5, atol=1e-5)
  # Independent of autodiff: central differences of the batched field.
  h = 1e-2
  fd = sum((np.asarray(f(x + h * e)) - np.asarray(f(x - h * e)))[:, i] / (2 * h)
           for i, e in enumerate(np.eye(2, dtype=np.float32)))
  scale = np.abs(np.asarray(div)).max()
  assert scale > 0.1  # a non-trivial field
  np.testing.assert_allclose(np.asarray(div), fd, atol=2e-3 * scale)


def test_blurred_fourier_features_are_the_features_averaged_over_the_noise():
  rng = np.random.default_rng(0)
  u = rng.normal(size=(3, 2)).astype(np.float32)
  blur = np.array([0.0, 0.05, 0.3], np.float32)
  freqs = jnp.asarray(np.geomspace(1.0, 30.0, 5), jnp.float32)
  got = np.asarray(features.fourier_features(jnp.asarray(u), freqs, jnp.asarray(blur)))
  noise = rng.normal(size=(200_000, 1, 2)).astype(np.float32)
  noisy = u[None] + blur[None, :, None] * noise  # [M, 3, 2]
  mc = np.asarray(features.fourier_features(jnp.asarray(noisy), freqs)).mean(0)
  np.testing.assert_allclose(got[:, 2:], mc[:, 2:], atol=0.01)  # standard errors <= 0.0016
  np.testing.assert_array_equal(got[:, :2], u)
  np.testing.assert_allclose(got[0], np.asarray(features.fourier_features(
      jnp.asarray(u[:1]), freqs))[0], rtol=1e-6)


# ---------------------------------------------------------------------------
# The models' ODEs with their exact networks for Gaussian data.

MU, S = np.array([0.4, -0.3]), np.array([0.5, 0.8])  # data N(MU, S^2) in unit coords


def _gauss_fm_velocity(u, t):
  """E[u_1 - u_0 | u_t] for u_1 ~ N(MU, S^2), u_0 ~ N(0, I), u_t = (1-t) u_0 + t u_1."""
  var = (1 - t)**2 + t**2 * S**2
  return MU + (t * S**2 - (1 - t)) / var * (u - t * MU)


def _gauss_eps(model):
  """The exact noise predictor, with the schedule written out independently."""
  b = np.arctan(np.exp(-model.logsnr_max / 2))
  a = np.arctan(np.exp(-model.logsnr_min / 2)) - b

  def eps(u, t):
    lam = -2.0 * jnp.log(jnp.tan(a * jnp.asarray(t)[..., None] + b))
    a2, s2 = jax.nn.sigmoid(lam), jax.nn.sigmoid(-lam)
    return jnp.sqrt(s2) * (u - jnp.sqrt(a2) * MU) / (a2 * S**2 + s2)
  return eps


def _unbound(cls, **kw):
  """Runs a method of an (unparameterised) module with a closed-form network."""
  model = cls(**kw)
  return model, lambda name, *args: model.apply({}, *args, method=name)


def test_flow_matching_ode_with_the_exact_velocity_gives_the_data_density():
  model, call = _unbound(continuous.FlowMatching, loc=(10.0, -5.0), scale=(80.0, 40.0),
                         num_ode_steps=64)
  loc, scale = np.array(model.loc), np.array(model.scale)
  u = MU + S * np.random.default_rng(0).normal(size=(300, 2))
  x = (loc + scale * u).astype(np.float32)
  got = call("log_prob_with", _gauss_fm_velocity, x)
  expected = stats.norm.logpdf(x, loc + scale * MU, scale * S).sum(-1)
  np.testing.assert_allclose(np.asarray(got), expected, atol=2e-3)
  samples = np.asarray(call("sample_with", _gauss_fm_velocity, jax.random.key(0), 20_000))
  # 20,000 samples: the standard error of the mean is std / 141.
  assert np.all(np.abs(samples.mean(0) - (loc + scale * MU)) < 4 * scale * S / 141)
  np.testing.assert_allclose(samples.std(0), scale * S, rtol=0.03)


def test_diffusion_ode_and_ancestral_sampling_with_the_exact_noise_predictor():
  model, call = _unbound(continuous.Diffusion, loc=(10.0, -5.0), scale=(80.0, 40.0),
                         logsnr_min=-20.0, num_ode_steps=64, num_sampling_steps=500)
  loc, scale = np.array(model.loc), np.array(model.scale)
  eps = _gauss_eps(model)
  u = MU + S * np.random.default_rng(0).normal(size=(300, 2))
  x = (loc + scale * u).astype(np.float32)
  got = call("log_prob_with", eps, x)
  # The ODE starts at t=0, the data noised to sigma_min: N(alpha_0 MU, alpha_0^2 S^2 + sigma_0^2).
  a2, s2 = jax.nn.sigmoid(model.logsnr_max), jax.nn.sigmoid(-model.logsnr_max)
  expected = stats.norm.logpdf(u, np.sqrt(a2) * MU, np.sqrt(a2 * S**2 + s2)).sum(-1)
  np.testing.assert_allclose(np.asarray(got), expected - np.log(scale).sum(), atol=2e-3)
  samples = np.asarray(call("sample_with", eps, jax.random.key(0), 20_000))
  # 20,000 samples: the standard error of the mean is std / 141.
  assert np.all(np.abs(samples.mean(0) - (loc + scale * MU)) < 4 * scale * S / 141)
  np.testing.assert_allclose(samples.std(0), scale * S, rtol=0.03)


@pytest.mark.parametrize("name", MODELS)
def test_stable_target_is_the_posterior_mean_of_the_target(name):
  """With the batch as reference set, the stable target approaches E[target | u_t].

  Gaussian data, whose exact E[target | u_t] is known (the closed-form networks
  above): the stable target is closer to it than the one-sample target, and
  far closer at high noise, where many of the batch's points could have made
  u_t (at low noise only the point itself could, and the two targets agree).
  """
  model, call = _unbound(MODELS[name], stable_target=True)
  u = jnp.asarray(MU + S * np.random.default_rng(0).normal(size=(4096, 2)), jnp.float32)
  ut, t, stable = call("training_pairs", u, jax.random.key(0))
  _, _, plain = model.clone(stable_target=False).apply(
      {}, u, jax.random.key(0), method="training_pairs")
  exact = (_gauss_fm_velocity(ut, t[:, None]) if name == "flow_matching"
           else _gauss_eps(model)(ut, t))
  err_stable = np.asarray(jnp.sum((stable - exact)**2, -1))
  err_plain = np.asarray(jnp.sum((plain - exact)**2, -1))
  assert np.isfinite(err_stable).all() and err_stable.mean() < 0.7 * err_plain.mean()
  # High noise: flow matching's t < 1/2; diffusion's t > 1/2 (lambda < ~0).
  high = np.asarray(t < 0.5) if name == "flow_matching" else np.asarray(t > 0.5)
  assert high.sum() > 1000
  assert err_stable[high].mean() < 0.05 * err_plain[high].mean(), (
      err_stable[high].mean(), err_plain[high].mean())


def test_diffusion_schedule_ends_and_inverse():
  model = continuous.Diffusion(logsnr_min=-10.0, logsnr_max=14.0)
  lam = lambda t: model.apply({}, t, method="logsnr")
  np.testing.assert_allclose(lam(jnp.array([0.0, 1.0])), [14.0, -10.0], atol=1e-3)
  t = jnp.linspace(0.0, 1.0, 101)
  assert np.all(np.diff(np.asarray(lam(t))) < 0)
  np.testing.assert_allclose(model.apply({}, lam(t), method="time_of_logsnr"), t, atol=1e-5)


# ---------------------------------------------------------------------------
# Small trained models.

NUM_STEPS, BATCH = 400, 256


@functools.cache
def _trained(name):
  """(model, initial params, trained params, loss before, loss after) on the blobs."""
  extra = {"num_sampling_steps": 200} if name == "diffusion" else {}
  model = MODELS[name](num_ode_steps=16, **extra, **TINY)
  train = jnp.asarray(_blobs(4096, 0))
  variables = model.init(jax.random.key(0), train, jax.random.key(1), method="training_loss")
  params0 = variables["params"]
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(
      optax.warmup_cosine_decay_schedule(0.0, 1e-2, 40, NUM_STEPS, 1e-4)))

  def loss_fn(p, x, rng):
    return model.apply({"params": p}, x, rng, method="training_loss")[0]

  @jax.jit
  def train_all(params):
    def body(carry, i):
      p, o = carry
      k1, k2 = jax.random.split(jax.random.fold_in(jax.random.key(2), i))
      x = train[jax.random.randint(k1, (BATCH,), 0, train.shape[0])]
      g = jax.grad(loss_fn)(p, x, k2)
      upd, o = tx.update(g, o, p)
      return (optax.apply_updates(p, upd), o), None
    (params, _), _ = jax.lax.scan(body, (params, tx.init(params)), jnp.arange(NUM_STEPS))
    return params

  params = train_all(params0)
  # The loss on fixed points and keys, averaged over 8 draws of noise and time.
  held = jnp.asarray(_blobs(2048, 1))
  eval_loss = jax.jit(lambda p: jnp.mean(jax.vmap(
      lambda k: loss_fn(p, held, k))(jax.random.split(jax.random.key(3), 8))))
  return model, params0, params, float(eval_loss(params0)), float(eval_loss(params))


@pytest.mark.parametrize("name", MODELS)
def test_init_through_the_loss_and_through_log_prob_give_the_same_tree(name):
  model = MODELS[name](**TINY)
  x = jnp.zeros((4, 2))
  a = jax.eval_shape(lambda: model.init(jax.random.key(0), x, jax.random.key(1),
                                        method="training_loss"))
  b = jax.eval_shape(lambda: model.init(jax.random.key(0), x, method="log_prob"))
  assert jax.tree.structure(a) == jax.tree.structure(b)
  assert jax.tree.map(lambda l: l.shape, a) == jax.tree.map(lambda l: l.shape, b)


def _has_square(jaxpr, n):
  """Whether any value in the (nested) jaxpr has an [n, n] shape."""
  for eqn in jaxpr.eqns:
    if any(getattr(v.aval, "shape", None) == (n, n) for v in eqn.outvars):
      return True
    for param in eqn.params.values():  # jit, scan, ...: their inner jaxprs
      for sub in param if isinstance(param, (list, tuple)) else [param]:
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns") and _has_square(inner, n):
          return True
  return False


@pytest.mark.parametrize("name,options", [
    ("flow_matching", dict(stable_target=False, blur_features=False)),
    ("diffusion", dict(parameterization="eps", time_sampling="cosine",
                       stable_target=False, blur_features=False, num_sampling_steps=8)),
])
def test_the_plain_recipes_run(name, options):
  """The book's plain recipes (no stable target, plain features; eps, uniform t)."""
  model = MODELS[name](num_ode_steps=4, **options, **TINY)
  x = jnp.asarray(_blobs(64, 0))
  variables = model.init(jax.random.key(0), x, jax.random.key(1), method="training_loss")
  loss, metrics = model.apply(variables, x, jax.random.key(2), method="training_loss")
  assert np.isfinite(float(loss)) and set(metrics) == {"mse"}
  assert np.isfinite(np.asarray(model.apply(variables, x, method="log_prob"))).all()
  samples = model.apply(variables, jax.random.key(3), 16, method="sample")
  assert samples.shape == (16, 2) and np.isfinite(np.asarray(samples)).all()


@pytest.mark.parametrize("option", [dict(parameterization="x0"), dict(time_sampling="edm")])
def test_diffusion_rejects_unknown_options(option):
  model = continuous.Diffusion(**option, **TINY)
  with pytest.raises(ValueError):
    model.init(jax.random.key(0), jnp.zeros((4, 2)), jax.random.key(1), method="training_loss")


@pytest.mark.parametrize("name", MODELS)
def test_init_on_the_whole_training_set_skips_the_batch_squared_target(name):
  """The engine may initialise on all training points: no [N, N] weights then."""
  model, n = MODELS[name](**TINY), 1536
  x = jnp.zeros((n, 2))
  init = jax.make_jaxpr(lambda x: model.init(jax.random.key(0), x, jax.random.key(1),
                                             method="training_loss"))(x)
  assert not _has_square(init.jaxpr, n)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), x[:4], jax.random.key(1),
                                             method="training_loss"))
  loss = jax.make_jaxpr(lambda p, x: model.apply(p, x, jax.random.key(1),
                                                 method="training_loss"))(params, x)
  assert _has_square(loss.jaxpr, n)  # training does use the stable target


@pytest.mark.parametrize("name", MODELS)
def test_training_lowers_the_loss_and_the_held_out_nll(name):
  model, params0, params, before, after = _trained(name)
  assert after < 0.8 * before, (before, after)
  x = _blobs(2000, 4)
  lp = jax.jit(lambda p, x: model.apply({"params": p}, x, method="log_prob"))
  nll0, nll = -float(lp(params0, x).mean()), -float(lp(params, x).mean())
  truth = -float(_blobs_log_prob(x).mean())  # 8.49 nats
  # 400 steps of a 2x32 network get within ~0.25 nats of the truth.
  assert nll < nll0 - 1.0 and nll < truth + 0.5, (nll0, nll, truth)


@pytest.mark.parametrize("name", MODELS)
def test_ode_step_count_converged(name):
  """Doubling the RK4 steps (16 -> 32) moves the held-out NLL by < 0.005 nats."""
  model, _, params, _, _ = _trained(name)
  x = jnp.asarray(_blobs(2000, 5))
  nll = {k: -float(jax.jit(lambda p, x: model.apply(
      {"params": p}, x, num_ode_steps=k, method="log_prob"))(params, x).mean())
         for k in (16, 32)}
  assert abs(nll[16] - nll[32]) < 0.005, nll


@pytest.mark.parametrize("name", MODELS)
def test_density_integrates_to_one(name):
  """Midpoint rule on 128^2 cells over a box holding nearly all the mass: |1 - I| < 0.02.

  The cells (6.5 x 4.4 degrees) are below the blobs' widths (8 to 12 degrees);
  the tolerance allows for the sharper ridges a briefly trained model puts
  between the blobs (the diffusion model's integral moves by ~0.006 from 128^2
  to 256^2 cells).
  """
  model, _, params, _, _ = _trained(name)
  lp = jax.jit(lambda x: model.apply({"params": params}, x, method="log_prob"))
  total = probability.integrate_2d(lambda x: np.exp(np.asarray(lp(jnp.asarray(x, jnp.float32)))),
                                   (-400.0, -280.0), (430.0, 280.0), num=128)
  assert abs(total - 1.0) < 0.02, total


@pytest.mark.parametrize("name", MODELS)
def test_sampling_shape_and_range(name):
  model, _, params, _, _ = _trained(name)
  samples = np.asarray(jax.jit(lambda k: model.apply(
      {"params": params}, k, 4000, method="sample"))(jax.random.key(9)))
  assert samples.shape == (4000, 2) and samples.dtype == np.float32
  assert np.isfinite(samples).all()
  # Most samples fall within 3 standard deviations of a blob centre.
  dist = np.linalg.norm(samples[:, None] - CENTRES[None], axis=-1) / STDS
  assert np.mean(dist.min(1) < 3.0) > 0.9
  np.testing.assert_allclose(samples.mean(0), CENTRES.mean(0), atol=10.0)


def test_flow_matching_samples_match_its_density():
  """The samples' histogram on 10-degree cells against the density integrated
  over each cell (midpoint rule on 2-degree sub-cells): total variation within
  the sampling noise of 50,000 samples (~0.015) plus the ODE's error.

  Sampling runs the flow's ODE backwards with the same RK4 grid as the
  likelihood, so this checks the two directions of one model against each other.
  """
  model, _, params, _, _ = _trained("flow_matching")
  samples = np.asarray(jax.jit(lambda k: model.apply(
      {"params": params}, k, 50_000, method="sample"))(jax.random.key(11)))
  edges_x, edges_y = np.arange(-120.0, 161.0, 10.0), np.arange(-60.0, 91.0, 10.0)
  counts, _, _ = np.histogram2d(samples[:, 0], samples[:, 1], [edges_x, edges_y])
  sub = 2.0  # sub-cell side, degrees
  cx = np.arange(edges_x[0] + sub / 2, edges_x[-1], sub)
  cy = np.arange(edges_y[0] + sub / 2, edges_y[-1], sub)
  grid = np.stack(np.meshgrid(cx, cy, indexing="ij"), -1).reshape(-1, 2).astype(np.float32)
  dens = np.exp(np.asarray(jax.jit(lambda x: model.apply(
      {"params": params}, x, method="log_prob"))(grid))).reshape(len(cx), len(cy))
  k = int(10.0 / sub)
  mass = dens.reshape(len(edges_x) - 1, k, len(edges_y) - 1, k).sum((1, 3)) * sub**2
  assert mass.sum() > 0.97 and counts.sum() / len(samples) > 0.97  # the blobs are inside
  tv = 0.5 * np.abs(counts / len(samples) - mass).sum()
  assert tv < 0.04, tv
