"""Maths of the autoregressive density (genmodels.models.autoregressive).

Small models, for both orders and both conditionals, get random, clearly
non-trivial parameters (normal noise on every leaf) and are checked against
independent computations: numpy re-implementations of each factor, quadrature
of exp(log_prob) over the box and over the second coordinate alone, and
chi-square / Kolmogorov-Smirnov tests of samples against the density. Shapes
are fixed (inputs are padded to one chunk) so each function compiles once.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special
from scipy import stats

from genmodels import probability
from genmodels.models import autoregressive as ar

CHUNK = 1 << 16  # probability.integrate_2d's default chunk: one compile per model.
NUM_SAMPLES = 20_000
LO, HI = (-2.0, 1.0), (3.0, 4.0)
BINS = (10, 7)  # per coordinate, data order
NOISE = 0.7
CASES = [(o, c) for o in ("lon_lat", "lat_lon") for c in ("intervals", "categorical")]


def _make(order, conditional):
  return ar.AutoregressiveDensity(order=order, lo=LO, hi=HI, bins=BINS,
                                  conditional=conditional, num_components=3,
                                  hidden=16, depth=2, num_frequencies=3)


def _init_data(seed=0, n=256):
  """Non-uniform points in the box (a fresh model's histograms start from them)."""
  rng = np.random.default_rng(seed)
  u = rng.beta(2.0, 5.0, size=(n, 2))
  return (np.asarray(LO) + u * (np.asarray(HI) - np.asarray(LO))).astype(np.float32)


def _perturb(params, seed, scale):
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda p: jnp.asarray(np.asarray(p) + scale * rng.normal(size=p.shape), p.dtype),
      params)


def _pad(x):
  x = np.asarray(x, np.float32)
  assert len(x) <= CHUNK
  return np.concatenate([x, np.zeros((CHUNK - len(x), 2), np.float32)])


class Case:
  """A model, fresh and perturbed variables, and jitted fixed-shape functions."""

  def __init__(self, order, conditional):
    self.order, self.conditional = order, conditional
    self.first, self.second = ar.ORDERS[order]
    self.model = model = _make(order, conditional)
    self.fresh = jax.jit(lambda k, x: model.init(k, x, method="log_prob"))(
        jax.random.key(0, impl="rbg"), jnp.asarray(_init_data()))
    self.variables = {"params": _perturb(self.fresh["params"], 3, NOISE)}
    self._log_prob = jax.jit(lambda v, x: model.apply(v, x, method="log_prob"))
    self._factors = jax.jit(lambda v, x: model.apply(v, x, method="factors"))
    self._raw = jax.jit(lambda v, x: model.apply(v, x)[1])
    self._sample = jax.jit(lambda v, k: model.apply(v, k, NUM_SAMPLES, method="sample"))

  def log_prob(self, x, variables=None):
    variables = self.variables if variables is None else variables
    x = np.asarray(x, np.float32)
    out = [np.asarray(self._log_prob(variables, _pad(x[i:i + CHUNK])))[:len(x[i:i + CHUNK])]
           for i in range(0, len(x), CHUNK)]
    return np.concatenate(out).astype(np.float64)

  def factors(self, x):
    lf, ls = self._factors(self.variables, _pad(x))
    return np.asarray(lf, np.float64)[:len(x)], np.asarray(ls, np.float64)[:len(x)]

  def raw(self, x):
    return np.asarray(self._raw(self.variables, _pad(x)), np.float64)[:len(x)]

  def sample(self, seed=0):
    return np.asarray(self._sample(self.variables, jax.random.key(seed)), np.float64)


@functools.cache
def _get(order, conditional):
  return Case(order, conditional)


@pytest.fixture(scope="module", params=CASES, ids=["-".join(c) for c in CASES])
def case(request):
  c = _get(*request.param)
  # The perturbed model must be far from uniform: KL(model || uniform) > 0.2 nats.
  x = c.sample(seed=5)
  kl = np.mean(c.log_prob(x)) + np.log(np.prod(np.subtract(HI, LO)))
  assert kl > 0.2, kl
  return c


# Independent numpy versions of the two factors ------------------------------


def _np_categorical_log_density(u, logits):
  """log-density on [0, 1] of softmax(logits) over equal bins, uniform inside."""
  logits = np.asarray(logits, np.float64)
  b = logits.shape[-1]
  log_p = logits - special.logsumexp(logits, -1, keepdims=True)
  k = np.minimum((u * b).astype(int), b - 1)
  chosen = log_p[k] if log_p.ndim == 1 else log_p[np.arange(len(u)), k]
  return chosen + np.log(b)


def _np_interval_log_density(t, raw, grid=1 << 16):
  """Soft-interval mixture on [0, 1] from its definition; each component's mass
  in [0, 1] by the midpoint rule rather than the closed-form CDF."""
  raw = np.asarray(raw, np.float64).reshape(len(raw), 4, -1)
  w = special.softmax(raw[:, 0], -1)
  centre = special.expit(raw[:, 1])
  half = ar.MIN_HALF_WIDTH + (ar.MAX_HALF_WIDTH - ar.MIN_HALF_WIDTH) * special.expit(raw[:, 2])
  scale = np.exp(np.log(ar.MIN_EDGE) + (np.log(ar.MAX_EDGE) - np.log(ar.MIN_EDGE)) *
                 special.expit(raw[:, 3]))
  a, b = centre - half, centre + half

  def comp(tt):  # [N, M] points -> [N, M, K] untruncated component densities
    tt = tt[..., None]
    return (special.expit((tt - a[:, None]) / scale[:, None]) -
            special.expit((tt - b[:, None]) / scale[:, None])) / (b - a)[:, None]

  mid = (np.arange(grid) + 0.5) / grid
  mass = comp(np.broadcast_to(mid, (len(raw), grid))).mean(1)  # [N, K]
  dens = comp(np.asarray(t, np.float64)[:, None])[:, 0]  # [N, K]
  return np.log(np.sum(w * dens / mass, -1))


def _unit(x):
  return (np.asarray(x, np.float64) - np.asarray(LO)) / (np.subtract(HI, LO))


# Tests -----------------------------------------------------------------------


def test_log_prob_integrates_to_one_over_the_box(case):
  # 560 cells per axis: a multiple of both bin counts, so the midpoint rule is
  # exact on the categorical steps and only the network's smooth parts remain.
  assert 560 % BINS[0] == 0 and 560 % BINS[1] == 0
  total = probability.integrate_2d(lambda x: np.exp(case.log_prob(x)), LO, HI, num=560)
  assert abs(total - 1.0) < 1e-3, total


def test_first_factor_is_the_categorical_marginal(case):
  x = np.random.default_rng(1).uniform(LO, HI, size=(500, 2)).astype(np.float32)
  log_first, log_second = case.factors(x)
  logits = case.variables["params"]["marginal_logits"]
  expected = (_np_categorical_log_density(_unit(x)[:, case.first], logits) -
              np.log(HI[case.first] - LO[case.first]))
  np.testing.assert_allclose(log_first, expected, atol=2e-5)
  np.testing.assert_allclose(case.log_prob(x), log_first + log_second, atol=1e-5)


def test_second_factor_is_the_conditional_from_the_network(case):
  x = np.random.default_rng(2).uniform(LO, HI, size=(64, 2)).astype(np.float32)
  x[:4, case.second] = [LO[case.second], HI[case.second], LO[case.second], HI[case.second]]
  _, log_second = case.factors(x)
  raw = case.raw(x)
  t = _unit(x)[:, case.second]
  if case.conditional == "categorical":
    expected = _np_categorical_log_density(t, raw)
  else:
    expected = _np_interval_log_density(t, raw)
  expected -= np.log(HI[case.second] - LO[case.second])
  assert np.all(np.isfinite(expected))
  np.testing.assert_allclose(log_second, expected, atol=2e-4, rtol=1e-4)


def test_joint_integrated_over_second_coordinate_is_the_marginal(case):
  """The density factorises: int p(x1, x2) dx2 = p(x1), at several x1."""
  num = 8192
  firsts = np.random.default_rng(4).uniform(LO[case.first], HI[case.first], 6)
  t = LO[case.second] + (HI[case.second] - LO[case.second]) * (np.arange(num) + 0.5) / num
  pts = np.zeros((len(firsts), num, 2), np.float32)
  pts[..., case.first] = firsts[:, None]
  pts[..., case.second] = t[None]
  dens = np.exp(case.log_prob(pts.reshape(-1, 2))).reshape(len(firsts), num)
  integral = dens.mean(1) * (HI[case.second] - LO[case.second])
  marginal = np.exp(_np_categorical_log_density(
      _unit(pts[:, 0])[:, case.first], case.variables["params"]["marginal_logits"]) -
      np.log(HI[case.first] - LO[case.first]))
  np.testing.assert_allclose(integral, marginal, rtol=2e-3)


def test_samples_lie_in_the_box_and_match_the_density(case):
  x = case.sample(seed=0)
  assert x.shape == (NUM_SAMPLES, 2) and np.all(np.isfinite(x))
  assert np.all((x >= LO) & (x <= HI))
  assert np.all(np.isfinite(case.log_prob(x)))
  # The first coordinate over its own bins: exact probabilities.
  b1 = BINS[case.first]
  logits = np.asarray(case.variables["params"]["marginal_logits"], np.float64)
  k = np.minimum((_unit(x)[:, case.first] * b1).astype(int), b1 - 1)
  counts = np.bincount(k, minlength=b1)
  p = special.softmax(logits)
  assert stats.chisquare(counts, NUM_SAMPLES * p).pvalue > 1e-3
  # The joint on coarse cells, probabilities by quadrature of exp(log_prob).
  cells, sub = (5, 4), 96
  grid = [LO[i] + (HI[i] - LO[i]) * (np.arange(cells[i] * sub) + 0.5) / (cells[i] * sub)
          for i in range(2)]
  pts = np.stack(np.meshgrid(*grid, indexing="ij"), -1).reshape(-1, 2)
  dens = np.exp(case.log_prob(pts)).reshape(cells[0], sub, cells[1], sub)
  probs = dens.sum((1, 3)) * np.prod(np.subtract(HI, LO)) / (cells[0] * cells[1] * sub**2)
  assert abs(probs.sum() - 1) < 3e-3
  idx = [np.minimum((_unit(x)[:, i] * cells[i]).astype(int), cells[i] - 1) for i in range(2)]
  observed = np.zeros(cells)
  np.add.at(observed, tuple(idx), 1)
  expected = NUM_SAMPLES * probs / probs.sum()
  keep = expected > 5
  chi2 = np.sum((observed[keep] - expected[keep])**2 / expected[keep])
  assert stats.chi2.sf(chi2, keep.sum() - 1) > 1e-3, (chi2, keep.sum())
  assert observed[~keep].sum() < 5 * max((~keep).sum(), 1) + 10


def test_density_is_finite_on_the_edges_and_zero_outside(case):
  lo, hi = np.asarray(LO), np.asarray(HI)
  mid = (lo + hi) / 2
  edges = np.array([lo, hi, [lo[0], hi[1]], [hi[0], lo[1]], [lo[0], mid[1]],
                    [hi[0], mid[1]], [mid[0], lo[1]], [mid[0], hi[1]]], np.float32)
  assert np.all(np.isfinite(case.log_prob(edges)))
  outside = np.array([[lo[0] - 1e-3, mid[1]], [hi[0] + 1e-3, mid[1]],
                      [mid[0], lo[1] - 1e-3], [mid[0], hi[1] + 1e-3]], np.float32)
  assert np.all(case.log_prob(outside) == -np.inf)


def test_jit_does_not_recompile(case):
  x1 = np.random.default_rng(6).uniform(LO, HI, size=(CHUNK, 2)).astype(np.float32)
  before = (case._log_prob._cache_size(), case._sample._cache_size())
  a = case.log_prob(x1)
  b = case.log_prob(x1[::-1])
  s1, s2 = case.sample(seed=11), case.sample(seed=12)
  assert (case._log_prob._cache_size(), case._sample._cache_size()) == before == (1, 1)
  np.testing.assert_allclose(a, b[::-1], atol=1e-5)
  assert not np.allclose(s1, s2)


@pytest.mark.parametrize("conditional", ["intervals", "categorical"])
def test_orders_are_the_two_factorisations(conditional):
  """Swapping the order swaps which coordinate gets the free marginal."""
  fresh = {o: _get(o, conditional).fresh["params"] for o in ("lon_lat", "lat_lon")}
  assert fresh["lon_lat"]["marginal_logits"].shape == (BINS[0],)
  assert fresh["lat_lon"]["marginal_logits"].shape == (BINS[1],)
  # Both start at the data's histogram of their first coordinate (+1 per bin).
  x = _init_data()
  for order, axis in (("lon_lat", 0), ("lat_lon", 1)):
    k = np.minimum((_unit(x)[:, axis] * BINS[axis]).astype(int), BINS[axis] - 1)
    np.testing.assert_allclose(fresh[order]["marginal_logits"],
                               np.log(np.bincount(k, minlength=BINS[axis]) + 1.0),
                               rtol=1e-6)


def test_fresh_categorical_model_is_the_product_of_data_histograms():
  c = _get("lon_lat", "categorical")
  x = _init_data()
  u = _unit(x)
  expected = 0.0
  for axis in (0, 1):
    k = np.minimum((u[:, axis] * BINS[axis]).astype(int), BINS[axis] - 1)
    counts = np.bincount(k, minlength=BINS[axis]) + 1.0
    expected = expected + np.log(counts[k] / counts.sum() * BINS[axis] /
                                 (HI[axis] - LO[axis]))
  np.testing.assert_allclose(c.log_prob(x, c.fresh), expected, atol=1e-5)


def test_interval_mixture_sampler_and_normalisation_in_hard_cases():
  """Sharp edges, components crossing either end of [0, 1], a very wide one."""
  k = 4
  w = np.array([0.0, 0.5, -0.5, 0.2])
  centre = special.logit(np.array([0.02, 0.5, 0.97, 0.6]))
  half = special.logit((np.array([0.1, 0.55, 0.2, 0.01]) - ar.MIN_HALF_WIDTH) /
                       (ar.MAX_HALF_WIDTH - ar.MIN_HALF_WIDTH))
  edge = special.logit((np.log([2e-4, 0.05, 0.15, 1.5e-4]) - np.log(ar.MIN_EDGE)) /
                       (np.log(ar.MAX_EDGE) - np.log(ar.MIN_EDGE)))
  raw = np.concatenate([w, centre, half, edge]).astype(np.float32)
  assert raw.shape == (4 * k,)
  num = 1 << 18
  t = (np.arange(num) + 0.5) / num
  log_p = jax.jit(ar.interval_log_density)(jnp.asarray(t, jnp.float32),
                                           jnp.broadcast_to(jnp.asarray(raw), (num, 4 * k)))
  dens = np.exp(np.asarray(log_p, np.float64))
  assert abs(dens.mean() - 1.0) < 1e-3, dens.mean()
  expected = _np_interval_log_density(t[:2048:37], raw[None].repeat(len(t[:2048:37]), 0))
  np.testing.assert_allclose(np.log(dens[:2048:37]), expected, atol=2e-4, rtol=1e-4)
  cdf = np.cumsum(dens) / dens.sum()
  samples = np.asarray(jax.jit(ar.interval_sample)(
      jax.random.key(0), jnp.broadcast_to(jnp.asarray(raw), (NUM_SAMPLES, 4 * k))))
  assert np.all((samples >= 0) & (samples <= 1))
  ks = stats.kstest(samples, lambda s: np.interp(s, t, cdf))
  assert ks.pvalue > 1e-3, ks


def test_bad_order_or_conditional_raises():
  x = jnp.zeros((2, 2))
  for kw in ({"order": "lat_lat"}, {"conditional": "gaussian"}):
    with pytest.raises(ValueError):
      ar.AutoregressiveDensity(**kw).init(jax.random.key(0), x, method="log_prob")
