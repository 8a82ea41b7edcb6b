"""Maths of the normalizing flows (genmodels.models.flows): RealNVP and SplineFlow.

The flows get random, clearly non-identity parameters (normal noise added to
every leaf of the initial parameters) and are checked against independent
computations: round trips, jax.jacfwd + slogdet for the log-determinants and
the change of variables, quadrature of exp(log_prob), and a chi-square test of
samples against the model's probability per bin. Shapes are fixed so each
function compiles once.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from genmodels import probability
from genmodels.models import flows

CHUNK = 1 << 16  # probability.integrate_2d's default chunk: one compile per model.
NUM_SAMPLES = 20_000
NUM_POINTS = 64  # points for round trips and Jacobians

# RealNVP with lo/hi of unit half-width in x and half-width 2 in y: normalised
# coordinates u = (x / 1, y / 2) are unit scale and log|scale| = log 2.
RNVP_LO, RNVP_HI = (-1.0, -2.0), (1.0, 2.0)
SPLINE_LO, SPLINE_HI = (-2.0, 1.0), (3.0, 4.0)
# Noise scales: a RealNVP with larger noise puts mass at |u| of hundreds (its
# shift is unbounded), which no grid resolves; the spline flow stays on its box.
NOISE = {"realnvp": 0.3, "spline_flow": 0.5}
NOISE_SEED = {"realnvp": 1, "spline_flow": 5}


def _make(name):
  if name == "realnvp":
    return flows.RealNVP(lo=RNVP_LO, hi=RNVP_HI, num_layers=3, hidden=8, depth=1)
  return flows.SplineFlow(lo=SPLINE_LO, hi=SPLINE_HI, num_layers=2, hidden=8, depth=1,
                          num_bins=6, num_frequencies=2)


def _perturb(params, seed, scale):
  """Adds N(0, scale^2) noise to every leaf (numpy noise: no per-shape compiles)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda p: jnp.asarray(np.asarray(p) + scale * rng.normal(size=p.shape), p.dtype),
      params)


def _to_unit(name, x):
  """Data -> normalised coordinates, written out from lo/hi independently."""
  if name == "realnvp":
    lo, hi = np.asarray(RNVP_LO), np.asarray(RNVP_HI)
    return (x - (lo + hi) / 2) / ((hi - lo) / 2)
  lo, hi = np.asarray(SPLINE_LO), np.asarray(SPLINE_HI)
  return (x - lo) / (hi - lo)


def _from_unit(name, u):
  if name == "realnvp":
    lo, hi = np.asarray(RNVP_LO), np.asarray(RNVP_HI)
    return u * (hi - lo) / 2 + (lo + hi) / 2
  lo, hi = np.asarray(SPLINE_LO), np.asarray(SPLINE_HI)
  return lo + u * (hi - lo)


def _base_log_prob(name, z):
  if name == "realnvp":
    return stats.norm.logpdf(z).sum(-1)
  return np.where(np.all((z >= 0) & (z <= 1), -1), 0.0, -np.inf)


def _unit_points(name, seed):
  """NUM_POINTS normalised points: base-like random points (spline: with corners)."""
  rng = np.random.default_rng(seed)
  if name == "realnvp":
    return rng.normal(size=(NUM_POINTS, 2)).astype(np.float32)
  fixed = np.array([[0, 0], [0, 1], [1, 0], [1, 1], [0, 0.5], [0.5, 1]], np.float32)
  return np.concatenate([fixed, rng.uniform(size=(NUM_POINTS - len(fixed), 2))]
                        ).astype(np.float32)


def _round_trip(model, variables, u):
  """z, log-det = forward(u); u_back, log-det_back = inverse(z)."""
  z, logdet = model.apply(variables, u, method="forward")
  u_back, logdet_back = model.apply(variables, z, method="inverse")
  return {"z": z, "logdet": logdet, "u_back": u_back, "logdet_back": logdet_back}


def _point_jacobian(model, variables, point):
  """jax.jacfwd of the forward map of one point [2] -> [2]."""
  return jax.jacfwd(
      lambda p: model.apply(variables, p[None], method="forward")[0][0])(point)


class Flow:
  """A flow, its fresh and perturbed variables, and jitted fixed-shape functions."""

  def __init__(self, name):
    self.name = name
    self.model = model = _make(name)
    # An "rbg" key: its random initialisers compile much faster than threefry's.
    self.fresh = jax.jit(lambda k: model.init(k, jnp.zeros((4, 2)), method="log_prob"))(
        jax.random.key(0, impl="rbg"))
    self.variables = {"params": _perturb(self.fresh["params"], NOISE_SEED[name],
                                         NOISE[name])}
    self._log_prob = jax.jit(lambda v, x: model.apply(v, x, method="log_prob"))
    self._sample = jax.jit(lambda v, k: model.apply(v, k, NUM_SAMPLES, method="sample"))
    self.round_trip = jax.jit(functools.partial(_round_trip, model))
    self._jacobian = jax.jit(functools.partial(_point_jacobian, model))

  def jacobians(self, variables, u):
    """[N, 2, 2]: one jacfwd per point (a single compile for shape [2])."""
    return np.stack([np.asarray(self._jacobian(variables, p), np.float64) for p in u])

  def log_prob(self, variables, x):
    x = np.asarray(x, np.float32)
    out = []
    for start in range(0, len(x), CHUNK):
      part = x[start:start + CHUNK]
      padded = np.concatenate([part, np.zeros((CHUNK - len(part), 2), np.float32)])
      out.append(np.asarray(self._log_prob(variables, padded))[:len(part)])
    return np.concatenate(out).astype(np.float64)

  def density(self, variables):
    return lambda x: np.exp(self.log_prob(variables, x))

  def sample(self, variables, seed=0):
    return np.asarray(self._sample(variables, jax.random.key(seed)), np.float64)


@functools.cache
def _get_flow(name):
  return Flow(name)


@pytest.fixture(scope="module", params=["realnvp", "spline_flow"])
def flow(request):
  f = _get_flow(request.param)
  # The perturbed flow must be far from its base: KL(flow || base) > 0.3 nats.
  samples = f.sample(f.variables, seed=5)
  kl = np.mean(f.log_prob(f.variables, samples) - f.log_prob(f.fresh, samples))
  assert kl > 0.3, kl
  return f


def _interior(name, u):
  """Rows away from the spline box's edges, where jacfwd is two-sided."""
  if name == "realnvp":
    return np.ones(len(u), bool)
  return np.all((u > 0.005) & (u < 0.995), -1)


def test_inverse_of_forward_is_identity(flow):
  u = _unit_points(flow.name, 0)
  out = flow.round_trip(flow.variables, u)
  np.testing.assert_allclose(out["u_back"], u, atol=2e-5)
  np.testing.assert_allclose(out["logdet_back"], -np.asarray(out["logdet"]), atol=1e-4)
  assert np.abs(np.asarray(out["z"]) - u).max() > 0.05  # not the identity


NUM_JACOBIANS = 12


def test_logdet_equals_slogdet_of_jacobian(flow):
  u = _unit_points(flow.name, 2)
  keep = np.flatnonzero(_interior(flow.name, u))[:NUM_JACOBIANS]
  out = {k: np.asarray(v)[keep] for k, v in flow.round_trip(flow.variables, u).items()}
  u = u[keep]
  sign, expected = np.linalg.slogdet(flow.jacobians(flow.variables, u))
  # Each reversal of the two coordinates flips the orientation.
  assert np.all(sign == (-1)**flow.model.num_layers)
  np.testing.assert_allclose(out["logdet"], expected, atol=2e-4, rtol=1e-4)
  # The inverse's log-det is minus the forward's at the image point.
  np.testing.assert_allclose(out["logdet_back"], -expected, atol=2e-4, rtol=1e-4)


def test_log_prob_is_change_of_variables(flow):
  """log p(x) = log p_base(z) + log|det dz/du| + log|det du/dx|, u from lo/hi."""
  u = _unit_points(flow.name, 3)
  x = _from_unit(flow.name, u.astype(np.float64)).astype(np.float32)
  u = _to_unit(flow.name, x.astype(np.float64)).astype(np.float32)
  keep = np.flatnonzero(_interior(flow.name, u))[:NUM_JACOBIANS]
  z = np.asarray(flow.round_trip(flow.variables, u)["z"], np.float64)[keep]
  x, u = x[keep], u[keep]
  du_dx = np.diag(_to_unit(flow.name, np.eye(2)) - _to_unit(flow.name, np.zeros((2, 2))))
  expected = (_base_log_prob(flow.name, z) +
              np.linalg.slogdet(flow.jacobians(flow.variables, u))[1] +
              np.sum(np.log(du_dx)))
  assert np.all(np.isfinite(expected))
  np.testing.assert_allclose(flow.log_prob(flow.variables, x), expected,
                             atol=2e-4, rtol=1e-4)


def test_fresh_flow_is_its_base_distribution(flow):
  rng = np.random.default_rng(4)
  if flow.name == "realnvp":
    x = rng.normal(size=(500, 2)) * 3
    u = _to_unit(flow.name, x)
    half_width = (np.asarray(RNVP_HI) - np.asarray(RNVP_LO)) / 2
    expected = stats.norm.logpdf(u).sum(-1) - np.log(half_width).sum()
  else:
    lo, hi = np.asarray(SPLINE_LO), np.asarray(SPLINE_HI)
    corners = np.array([lo, hi, [lo[0], hi[1]], [hi[0], lo[1]], (lo + hi) / 2])
    x = np.concatenate([corners, rng.uniform(lo, hi, (495, 2))])
    expected = np.full(len(x), -np.log(np.prod(hi - lo)))
  np.testing.assert_allclose(flow.log_prob(flow.fresh, x), expected, atol=1e-5, rtol=1e-5)
  # The map itself is the identity up to the reversals between layers.
  u = _unit_points(flow.name, 5)
  out = flow.round_trip(flow.fresh, u)
  permuted = u[:, ::-1] if flow.model.num_layers % 2 else u
  np.testing.assert_allclose(out["z"], permuted, atol=1e-6)
  np.testing.assert_allclose(out["logdet"], 0.0, atol=1e-6)


def test_integrates_to_one(flow):
  v = flow.variables
  if flow.name == "realnvp":  # |u| <= 8, with u2 = y / 2.
    lo, hi, num = (-8.0, -16.0), (8.0, 16.0), 1024
  else:
    lo, hi, num = SPLINE_LO, SPLINE_HI, 512
  total = probability.integrate_2d(flow.density(v), lo, hi, num=num)
  assert total == pytest.approx(1.0, abs=0.01)


def test_samples_match_density(flow):
  v = flow.variables
  samples = flow.sample(v, seed=6)
  if flow.name == "realnvp":
    lo, hi = (-3.0, -6.0), (3.0, 6.0)
  else:
    lo, hi = SPLINE_LO, SPLINE_HI
  assert chi_square_pvalue(samples, flow.density(v), lo, hi, bins=8) > 1e-3


def bin_masses(density_fn, lo, hi, bins, fine=64):
  """Probability mass in each of bins x bins cells of [lo, hi], by midpoint rule."""
  lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
  num = bins * fine
  h = (hi - lo) / num
  xs = lo[0] + h[0] * (np.arange(num) + 0.5)
  ys = lo[1] + h[1] * (np.arange(num) + 0.5)
  grid = np.stack(np.meshgrid(xs, ys, indexing="ij"), -1).reshape(-1, 2)
  dens = density_fn(grid).reshape(bins, fine, bins, fine)
  return dens.sum(axis=(1, 3)) * h[0] * h[1]


def chi_square_pvalue(samples, density_fn, lo, hi, bins=8):
  """p-value of samples' 2-D histogram (plus an 'outside' cell) vs the density."""
  n = len(samples)
  mass = bin_masses(density_fn, lo, hi, bins)
  counts, _, _ = np.histogram2d(samples[:, 0], samples[:, 1], bins=bins,
                                range=[[lo[0], hi[0]], [lo[1], hi[1]]])
  expected = n * np.append(mass.ravel(), max(1.0 - mass.sum(), 0.0))
  observed = np.append(counts.ravel(), n - counts.sum())
  small = expected < 5  # Pool sparse cells so the chi-square law holds.
  if small.any():
    expected = np.append(expected[~small], expected[small].sum())
    observed = np.append(observed[~small], observed[small].sum())
  keep = expected > 0
  assert observed[~keep].sum() == 0, "samples where the model has no mass"
  expected, observed = expected[keep], observed[keep]
  chi2 = np.sum((observed - expected)**2 / expected)
  return stats.chi2.sf(chi2, df=len(expected) - 1)


# --- SplineFlow at and beyond the edges of its box ---------------------------------


@pytest.fixture(scope="module")
def spline():
  return _get_flow("spline_flow")


def _edge_points():
  lo, hi = np.asarray(SPLINE_LO, np.float32), np.asarray(SPLINE_HI, np.float32)
  mid = (lo + hi) / 2
  return np.array([lo, hi, [lo[0], hi[1]], [hi[0], lo[1]],
                   [lo[0], mid[1]], [hi[0], mid[1]], [mid[0], lo[1]], [mid[0], hi[1]]],
                  np.float32)


def test_spline_log_prob_and_gradient_finite_on_edges(spline):
  v = spline.variables
  x = jnp.asarray(_edge_points())
  lp = spline.log_prob(v, x)
  assert np.all(np.isfinite(lp)), lp

  def total(params):
    return jnp.sum(spline.model.apply({"params": params}, x, method="log_prob"))

  value, grads = jax.jit(jax.value_and_grad(total))(v["params"])
  assert np.isfinite(value)
  grads = [np.asarray(g) for g in jax.tree.leaves(grads)]
  assert all(np.all(np.isfinite(g)) for g in grads)
  assert max(np.abs(g).max() for g in grads) > 0


def test_spline_outside_box_is_minus_inf(spline):
  lo, hi = np.asarray(SPLINE_LO), np.asarray(SPLINE_HI)
  eps = 1e-3
  mid = (lo + hi) / 2
  x = np.array([[lo[0] - eps, mid[1]], [hi[0] + eps, mid[1]], [mid[0], lo[1] - eps],
                [mid[0], hi[1] + eps], lo - 5, hi + 100, [-1e6, 1e6]])
  for variables in (spline.variables, spline.fresh):
    assert np.all(np.isneginf(spline.log_prob(variables, x)))


def test_spline_samples_inside_box(spline):
  samples = spline.sample(spline.variables, seed=7)
  lo, hi = np.asarray(SPLINE_LO), np.asarray(SPLINE_HI)
  assert np.all((samples >= lo) & (samples <= hi))
  assert np.all(np.isfinite(spline.log_prob(spline.variables, samples)))


def test_one_layer_spline_flow_finite_on_float32_box_edges():
  """With one layer a coordinate skips the splines: edges must still be inside."""
  lo, hi = (-179.99, -55.3), (179.97, 83.6)  # Not representable in float32.
  model = flows.SplineFlow(lo=lo, hi=hi, num_layers=1, hidden=4, depth=1, num_bins=4)
  variables = jax.jit(lambda k: model.init(k, jnp.zeros((4, 2)), method="log_prob"))(
      jax.random.key(0, impl="rbg"))
  lo32, hi32 = np.float32(lo), np.float32(hi)
  x = np.array([lo32, hi32, [lo32[0], hi32[1]], [hi32[0], lo32[1]], (lo32 + hi32) / 2,
                [hi32[0] + 0.01, 0.0]], np.float32)
  lp = np.asarray(jax.jit(lambda v, x: model.apply(v, x, method="log_prob"))(variables, x))
  area = np.prod(np.asarray(hi) - np.asarray(lo))
  np.testing.assert_allclose(lp[:5], -np.log(area), rtol=1e-6)
  assert np.isneginf(lp[5])
