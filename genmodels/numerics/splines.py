"""Monotone rational-quadratic splines on the unit interval (pure JAX).

Implements the rational-quadratic (RQ) spline of Durkan et al. (2019),
"Neural Spline Flows", eqs. 4-8, together with its analytic inverse, as an
elementwise bijection g: [0, 1] -> [0, 1] with g(0) = 0 and g(1) = 1.

Maths. The interval is split into K bins with knots
0 = x_0 < ... < x_K = 1 (inputs) and 0 = y_0 < ... < y_K = 1 (outputs),
and positive knot derivatives d_0, ..., d_K. Inside bin k let

    w = x_{k+1} - x_k,  h = y_{k+1} - y_k,  s = h / w,  xi = (x - x_k) / w,
    D = s + (d_{k+1} + d_k - 2 s) xi (1 - xi).

Forward (eq. 4) and its derivative (eq. 5):

    g(x)  = y_k + h [s xi^2 + d_k xi (1 - xi)] / D
    g'(x) = s^2 [d_{k+1} xi^2 + 2 s xi (1 - xi) + d_k (1 - xi)^2] / D^2.

Inverse (eqs. 6-8): with dy = y - y_k, xi solves a xi^2 + b xi + c = 0 where

    a = h (s - d_k) + dy (d_{k+1} + d_k - 2 s)
    b = h d_k - dy (d_{k+1} + d_k - 2 s)
    c = -s dy,

and the numerically stable root is xi = 2c / (-b - sqrt(b^2 - 4ac)). In the
code the discriminant is expanded into a sum of non-negative terms,

    b^2 - 4ac = u^2 + v,  u = h d_k - dy (d_k + d_{k+1}),  v = 4 s^2 dy (h - dy),

so it is never negative and never suffers cancellation; then
xi = 2 s dy / (2 s dy + u + sqrt(u^2 + v)).

Parametrisation (per element, K bins):

    widths  = min_bin_width  + (1 - min_bin_width  K) softmax(unnormalized_widths)
    heights = min_bin_height + (1 - min_bin_height K) softmax(unnormalized_heights)
    d       = min_derivative + softplus(unnormalized_derivatives + c0),
              c0 = log(expm1(1 - min_derivative)),

so all-zero parameters give uniform bins and unit derivatives, i.e. the
identity map (s = 1, d = 1 => g(x) = x).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = ["spline_knots", "rational_quadratic_spline"]


def _normalize_sizes(unnormalized, min_size):
    """Softmax with a minimum bin size; output sums to 1 over the last axis."""
    num_bins = unnormalized.shape[-1]
    if min_size * num_bins >= 1.0:
        raise ValueError(f"min bin size {min_size} too large for {num_bins} bins.")
    return min_size + (1.0 - min_size * num_bins) * jax.nn.softmax(unnormalized, axis=-1)


def _cumulative_knots(sizes):
    """Bin sizes [..., K] -> knots [..., K+1] with exact endpoints 0 and 1."""
    knots = jnp.cumsum(sizes, axis=-1)
    knots = jnp.concatenate([jnp.zeros_like(knots[..., :1]), knots], axis=-1)
    return knots.at[..., -1].set(1.0)


def spline_knots(
    unnormalized_widths,
    unnormalized_heights,
    unnormalized_derivatives,
    min_bin_width=1e-3,
    min_bin_height=1e-3,
    min_derivative=1e-3,
):
    """Maps raw parameters to (x_knots, y_knots, derivatives), each [..., K+1]."""
    num_bins = unnormalized_widths.shape[-1]
    if unnormalized_heights.shape[-1] != num_bins:
        raise ValueError("widths and heights must have the same number of bins.")
    if unnormalized_derivatives.shape[-1] != num_bins + 1:
        raise ValueError("derivatives must have K+1 entries (one per knot).")
    x_knots = _cumulative_knots(_normalize_sizes(unnormalized_widths, min_bin_width))
    y_knots = _cumulative_knots(_normalize_sizes(unnormalized_heights, min_bin_height))
    # Offset so that a zero parameter gives derivative exactly 1 (up to float).
    offset = math.log(math.expm1(1.0 - min_derivative))
    derivatives = min_derivative + jax.nn.softplus(unnormalized_derivatives + offset)
    return x_knots, y_knots, derivatives


def _gather(values_k1, bin_idx):
    """values [..., K+1], bin_idx [...] -> (values[k], values[k+1]), each [...]."""
    lo = jnp.take_along_axis(values_k1, bin_idx[..., None], axis=-1)[..., 0]
    hi = jnp.take_along_axis(values_k1, bin_idx[..., None] + 1, axis=-1)[..., 0]
    return lo, hi


def rational_quadratic_spline(
    x,
    unnormalized_widths,
    unnormalized_heights,
    unnormalized_derivatives,
    inverse=False,
    min_bin_width=1e-3,
    min_bin_height=1e-3,
    min_derivative=1e-3,
):
    """Elementwise monotone RQ spline on [0, 1] and its log-derivative.

    Args:
      x: inputs, shape [...]. Values are clipped into [0, 1] (so tiny float
        excursions outside the interval are harmless).
      unnormalized_widths: shape [..., K].
      unnormalized_heights: shape [..., K].
      unnormalized_derivatives: shape [..., K+1] (both endpoint derivatives
        included). Leading dims of all params broadcast against x.shape.
      inverse: if True, computes g^{-1} instead of g.

    Returns:
      (y, logabsdet), both with the broadcast batch shape. Forward: y = g(x),
      logabsdet = log g'(x). Inverse: y = g^{-1}(x), logabsdet =
      log |d g^{-1} / dx| = -log g'(g^{-1}(x)).
    """
    x_knots, y_knots, derivs = spline_knots(
        unnormalized_widths,
        unnormalized_heights,
        unnormalized_derivatives,
        min_bin_width,
        min_bin_height,
        min_derivative,
    )
    batch_shape = jnp.broadcast_shapes(jnp.shape(x), x_knots.shape[:-1], derivs.shape[:-1])
    x = jnp.broadcast_to(jnp.clip(x, 0.0, 1.0), batch_shape)
    x_knots, y_knots, derivs = (
        jnp.broadcast_to(a, batch_shape + a.shape[-1:]) for a in (x_knots, y_knots, derivs)
    )

    # Bin index = number of interior knots <= x, in [0, K-1] (searchsorted by
    # counting; endpoints 0 and 1 land in the first and last bin respectively).
    search_knots = y_knots if inverse else x_knots
    bin_idx = jnp.sum(x[..., None] >= search_knots[..., 1:-1], axis=-1)

    x_k, x_k1 = _gather(x_knots, bin_idx)
    y_k, y_k1 = _gather(y_knots, bin_idx)
    d_k, d_k1 = _gather(derivs, bin_idx)
    w, h = x_k1 - x_k, y_k1 - y_k
    s = h / w
    d_sum = d_k + d_k1 - 2.0 * s

    if inverse:
        # Stable root xi = 2c / (-b - sqrt(b^2 - 4ac)), with c = -s dy and the
        # discriminant rewritten as a sum of non-negative terms (no cancellation):
        #   b^2 - 4ac = u^2 + v,  u = h d_k - dy (d_k + d_{k+1}),
        #   v = 4 s^2 dy (h - dy),  -b - sqrt(b^2 - 4ac) = -(2 s dy + u + sqrt(u^2 + v)).
        dy = jnp.clip(x - y_k, 0.0, h)
        u = h * d_k - dy * (d_k + d_k1)
        v = 4.0 * s * s * dy * (h - dy)
        sqrt_disc = jnp.sqrt(u * u + v)  # > 0 since d_k, d_{k+1} > 0.
        # u + sqrt(u^2 + v), evaluated as v / (sqrt(u^2 + v) - u) when u < 0.
        # Double `where` keeps the unused branch (and its gradient) finite.
        u_neg = u < 0.0
        q = jnp.where(u_neg, v / jnp.where(u_neg, sqrt_disc - u, 1.0), u + sqrt_disc)
        xi = jnp.clip(2.0 * s * dy / (2.0 * s * dy + q), 0.0, 1.0)
        out = x_k + xi * w
    else:
        xi = jnp.clip((x - x_k) / w, 0.0, 1.0)

    xi_1m = xi * (1.0 - xi)
    denom = s + d_sum * xi_1m
    deriv_num = s * s * (d_k1 * xi * xi + 2.0 * s * xi_1m + d_k * (1.0 - xi) ** 2)
    logdet = jnp.log(deriv_num) - 2.0 * jnp.log(denom)

    if inverse:
        return out, -logdet
    out = y_k + h * (s * xi * xi + d_k * xi_1m) / denom
    return out, logdet
