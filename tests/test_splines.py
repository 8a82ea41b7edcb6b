"""Mathematical tests for the unit-interval rational-quadratic spline.

Most tests run one scalar spline (params [K], [K], [K+1]) on N points through
a module-level jit, keeping shapes fixed so compilation happens only a few times.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genmodels.numerics import splines

K = 8  # bins
N = 512  # evaluation points per test

_spline = jax.jit(splines.rational_quadratic_spline, static_argnames="inverse")
_knots = jax.jit(splines.spline_knots)


def _uniform(seed, shape):
    return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


def _params(seed, batch_shape=(), scale=1.0):
    """Random (widths [..., K], heights [..., K], derivatives [..., K+1])."""
    rng = np.random.default_rng(seed)
    shapes = (batch_shape + (K,), batch_shape + (K,), batch_shape + (K + 1,))
    return tuple((scale * rng.normal(size=s)).astype(np.float32) for s in shapes)


def _points(params, inverse):
    """N points: 0, 1, all knots (x-knots, or y-knots for the inverse), random."""
    x_knots, y_knots, _ = _knots(*params)
    fixed = np.concatenate([[0.0, 1.0], y_knots if inverse else x_knots])
    rand = _uniform(123, (N - fixed.shape[0],))
    return np.concatenate([fixed, rand]).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_round_trip(seed):
    params = _params(seed)
    x = _points(params, inverse=False)
    y, ld_fwd = _spline(x, *params, inverse=False)
    x_rec, ld_inv = _spline(y, *params, inverse=True)
    np.testing.assert_allclose(x_rec, x, atol=1e-5)
    # log|dg^{-1}/dy|(y) = -log g'(g^{-1}(y)): exactly at the recovered point, and
    # up to float32 conditioning (x_rec - x ~ 1e-6, log g' varies fast) at x.
    _, ld_at_rec = _spline(x_rec, *params, inverse=False)
    np.testing.assert_allclose(ld_inv, -np.asarray(ld_at_rec), atol=1e-4)
    np.testing.assert_allclose(ld_inv, -np.asarray(ld_fwd), atol=2e-3)

    y = _points(params, inverse=True)
    x, _ = _spline(y, *params, inverse=True)
    y_rec, _ = _spline(x, *params, inverse=False)
    np.testing.assert_allclose(y_rec, y, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_round_trip_steep_params(seed):
    """With large params g' spans many decades: float32 rounding of y is
    amplified by 1/g' in x, so the inverse is checked up to that limit."""
    params = _params(seed, scale=4.0)
    x = _points(params, inverse=False)
    y, ld_fwd = _spline(x, *params, inverse=False)
    x_rec, _ = _spline(y, *params, inverse=True)
    # |x_rec - x| * g'(x): the round-trip error mapped to y space (~ulps of y).
    assert np.max(np.abs(x_rec - x) * np.exp(ld_fwd)) < 2e-6
    y_rec, _ = _spline(x_rec, *params, inverse=False)
    np.testing.assert_allclose(y_rec, y, atol=1e-5)


@functools.partial(jax.jit, static_argnames="inverse")
def _autodiff_logdet(x, params, inverse):
    scalar_map = lambda xi: splines.rational_quadratic_spline(xi, *params, inverse=inverse)[0]
    return jnp.log(jax.vmap(jax.grad(scalar_map))(x))


@pytest.mark.parametrize("inverse", [False, True])
def test_logdet_matches_autodiff(inverse):
    # Interior points (at the clip boundary autodiff is one-sided).
    x = (1e-3 + (1 - 2e-3) * _uniform(8, (N,))).astype(np.float32)
    for seed in (0, 1):
        params = _params(seed, scale=2.0)
        _, logdet = _spline(x, *params, inverse=inverse)
        np.testing.assert_allclose(
            logdet, _autodiff_logdet(x, params, inverse), atol=2e-4, rtol=1e-4
        )


def test_zero_params_is_identity():
    zeros = (np.zeros(K, np.float32), np.zeros(K, np.float32), np.zeros(K + 1, np.float32))
    x = np.linspace(0.0, 1.0, N, dtype=np.float32)
    for inverse in (False, True):
        y, logdet = _spline(x, *zeros, inverse=inverse)
        np.testing.assert_allclose(y, x, atol=1e-6)
        np.testing.assert_allclose(logdet, 0.0, atol=1e-5)
    _, _, derivs = _knots(*zeros)
    np.testing.assert_allclose(derivs, 1.0, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_monotone_and_endpoints(seed):
    params = _params(seed, scale=3.0)
    x = np.linspace(0.0, 1.0, N, dtype=np.float32)
    for inverse in (False, True):
        y, _ = _spline(x, *params, inverse=inverse)
        assert np.all(np.diff(y) >= 0.0)
        assert float(y[0]) == 0.0
        np.testing.assert_allclose(y[-1], 1.0, atol=1e-6)


@pytest.mark.parametrize("seed", [3, 4])
@pytest.mark.parametrize("inverse", [False, True])
def test_density_integrates_to_one(inverse, seed):
    """exp(logdet) is the density of g^{-1}(U) (resp. g(U)) for U ~ Uniform[0,1].

    The density is continuous (knot derivatives are shared by adjacent bins),
    so the trapezoid rule on a fine grid converges. Bins with very different
    widths and heights give the inverse density sharp peaks, hence the fine grid.
    """
    params = _params(seed)
    grid = np.linspace(0.0, 1.0, 100_001)
    _, logdet = _spline(grid.astype(np.float32), *params, inverse=inverse)
    integral = np.trapezoid(np.exp(np.asarray(logdet, np.float64)), grid)
    np.testing.assert_allclose(integral, 1.0, atol=1e-4)  # observed ~1e-7


@functools.partial(jax.jit, static_argnames="inverse")
def _outputs_and_grads(x, params, inverse):
    def loss(x, params):
        y, logdet = splines.rational_quadratic_spline(x, *params, inverse=inverse)
        return jnp.sum(y) + jnp.sum(logdet), (y, logdet)

    return jax.grad(loss, argnums=(0, 1), has_aux=True)(x, params)


@pytest.mark.parametrize("inverse", [False, True])
def test_finite_values_and_grads_at_edges(inverse):
    edge = np.array([0.0, 1.0, -1e-7, 1.0 + 1e-7, 0.5, 1e-7, 1.0 - 1e-7], np.float32)
    signs = [np.sign(p) for p in _params(11, (7,))]
    cases = [[scale * s for s in signs] for scale in (1.0, 30.0, -30.0)]
    cases += [[np.full_like(s, c) for s in signs] for c in (30.0, -30.0)]
    for params in cases:
        grads, (y, logdet) = _outputs_and_grads(edge, params, inverse)
        chex.assert_tree_all_finite((y, logdet, grads))
        assert np.all((np.asarray(y) >= 0.0) & (np.asarray(y) <= 1.0))
        # Out-of-range inputs are clipped: same outputs as the endpoints.
        np.testing.assert_array_equal(y[2], y[0])
        np.testing.assert_array_equal(y[3], y[1])


@pytest.mark.parametrize("inverse", [False, True])
def test_jit_matches_eager(inverse):
    params = _params(5)
    # Away from knots: there a 1-ulp knot difference may switch bins, which is
    # harmless but amplified by 1/g' in the ill-conditioned direction.
    x = np.concatenate([[0.0, 1.0], _uniform(5, (N - 2,))]).astype(np.float32)
    eager = splines.rational_quadratic_spline(x, *params, inverse=inverse)
    jitted = _spline(x, *params, inverse=inverse)
    # XLA fuses/reorders float32 arithmetic under jit; logdet is sensitive to
    # ulp-level changes of xi where the spline is steep, hence its looser atol.
    np.testing.assert_allclose(jitted[0], eager[0], atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(jitted[1], eager[1], atol=1e-4, rtol=1e-4)


def test_broadcasting_and_vmap():
    """x [N, 4] with params [4, K] == four scalar splines applied column-wise."""
    params = _params(6, (4,))
    x = _uniform(7, (N, 4))
    for inverse in (False, True):
        batched = _spline(x, *params, inverse=inverse)
        chex.assert_shape(batched, [(N, 4), (N, 4)])
        for j in range(4):
            column = _spline(x[:, j], *(p[j] for p in params), inverse=inverse)
            for b, c in zip(batched, column):
                np.testing.assert_allclose(np.asarray(b)[:, j], c, atol=1e-6, rtol=1e-5)
    vmapped = jax.jit(
        jax.vmap(splines.rational_quadratic_spline, in_axes=(1, 0, 0, 0), out_axes=1)
    )
    chex.assert_trees_all_close(
        vmapped(x, *params), _spline(x, *params, inverse=False), atol=1e-6, rtol=1e-5
    )
