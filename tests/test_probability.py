"""Tests of genmodels.probability against closed forms and Monte Carlo."""

import numpy as np
import pytest
from scipy import stats

from genmodels import probability

MEAN = np.array([1.0, -2.0])
COV = np.array([[2.0, 0.9], [0.9, 1.0]])


def _gaussian_pdf(x, mean=MEAN, cov=COV):
  """Bivariate normal density, written out (independent of the library)."""
  d = x - mean
  prec = np.linalg.inv(cov)
  quad = np.einsum("ni,ij,nj->n", d, prec, d)
  return np.exp(-0.5 * quad) / (2 * np.pi * np.sqrt(np.linalg.det(cov)))


def test_integrate_2d_gaussian_pdf_is_one():
  sd = np.sqrt(np.diag(COV))
  total = probability.integrate_2d(_gaussian_pdf, MEAN - 8 * sd, MEAN + 8 * sd, num=256)
  assert total == pytest.approx(1.0, abs=1e-6)


def test_integrate_2d_uniform_box_is_one():
  # A box whose edges are not on grid lines: the midpoint rule errs by O(h).
  lo, hi = np.array([-1.3, 0.7]), np.array([2.1, 1.9])
  area = np.prod(hi - lo)

  def density(x):
    inside = np.all((x >= lo) & (x <= hi), axis=-1)
    return np.where(inside, 1.0 / area, 0.0)

  total = probability.integrate_2d(density, (-3.0, -1.0), (4.0, 3.0), num=1024)
  assert total == pytest.approx(1.0, abs=0.01)


def test_integrate_2d_orientation_and_weights():
  # int_0^1 int_0^2 x^2 e^y dy dx = (1/3)(e^2 - 1): catches swapped axes/weights.
  total = probability.integrate_2d(lambda p: p[:, 0]**2 * np.exp(p[:, 1]),
                                   (0.0, 0.0), (1.0, 2.0), num=256)
  assert total == pytest.approx((np.e**2 - 1) / 3, rel=1e-4)


def test_integrate_1d_normal_pdf():
  total = probability.integrate_1d(stats.norm(0.5, 2.0).pdf, -15.5, 16.5)
  assert total == pytest.approx(1.0, abs=1e-8)


def test_log_likelihood_and_nll_are_consistent():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(500,))
  log_prob_fn = stats.norm(0.3, 1.5).logpdf
  expected_sum = float(np.sum(log_prob_fn(x)))
  ll = float(probability.log_likelihood(log_prob_fn, x))
  nll = float(probability.nll(log_prob_fn, x))
  assert ll == pytest.approx(expected_sum, rel=1e-5)
  assert nll == pytest.approx(-expected_sum / len(x), rel=1e-5)
  assert float(probability.nats_to_bits(np.log(2.0))) == pytest.approx(1.0)
  assert float(probability.nats_to_bits(nll)) == pytest.approx(nll / np.log(2.0))


def test_kl_to_truth_matches_gaussian_kl():
  # p = N(0, 1) is the truth, q = N(m, s^2) the model.
  m, s = 0.4, 1.7
  closed_kl = np.log(s) + (1 + m**2) / (2 * s**2) - 0.5
  true_entropy = 0.5 * np.log(2 * np.pi * np.e)
  # Exact cross-entropy E_p[-log q] gives the exact KL.
  cross_entropy = 0.5 * np.log(2 * np.pi * s**2) + (1 + m**2) / (2 * s**2)
  assert probability.kl_to_truth(cross_entropy, true_entropy) == pytest.approx(
      closed_kl, abs=1e-12)
  # The estimate from held-out samples of p (how the experiments use it).
  x = np.random.default_rng(1).normal(size=200_000)
  test_nll = float(probability.nll(stats.norm(m, s).logpdf, x))
  assert probability.kl_to_truth(test_nll, true_entropy) == pytest.approx(
      closed_kl, abs=0.01)


@pytest.mark.parametrize("cov", [COV, np.array([[0.3]]), np.diag([0.5, 2.0, 4.0])])
def test_gaussian_entropy_matches_monte_carlo(cov):
  d = cov.shape[0]
  dist = stats.multivariate_normal(np.zeros(d), cov)
  samples = dist.rvs(size=200_000, random_state=np.random.default_rng(2))
  mc = -np.mean(dist.logpdf(samples))
  # Standard error of -log p is sqrt(d/2 / n) < 0.003 here.
  assert probability.gaussian_entropy(cov) == pytest.approx(mc, abs=0.012)
  assert probability.gaussian_entropy(cov) == pytest.approx(dist.entropy(), abs=1e-10)


def test_gaussian_entropy_scalar_variance():
  assert probability.gaussian_entropy(np.float64(0.3)) == pytest.approx(
      0.5 * np.log(2 * np.pi * np.e * 0.3))
