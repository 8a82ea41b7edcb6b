"""Langevin dynamics on the unit box: ULA, MALA and uniform independence jumps.

The sampler of the energy model (``genmodels.models.ebm``): chains on [0, 1]^D
driven by the gradient of an energy E(u), with optional Metropolis-Hastings
correction so that exp(-E) on the box is exactly invariant.
"""

from typing import Callable

import jax
import jax.numpy as jnp

from genmodels.errors import UsageError

Array = jax.Array
EnergyFn = Callable[[Array], Array]


def reflect_unit(u: Array) -> Array:
  """Reflects points into [0, 1] at both walls (then clips the rare far overshoot)."""
  u = jnp.where(u < 0.0, -u, u)
  u = jnp.where(u > 1.0, 2.0 - u, u)
  return jnp.clip(u, 0.0, 1.0)


def _energy_and_grad(energy_fn: EnergyFn, u: Array) -> tuple[Array, Array]:
  """Per-point energies [N] and their gradients [N, D] (chains are independent)."""
  e, vjp = jax.vjp(energy_fn, u)
  return e, vjp(jnp.ones_like(e))[0]


def langevin(energy_fn: EnergyFn, u0: Array, rng: Array, num_steps: int,
             step_size: float, noise: float, grad_clamp: float | None = None,
             metropolis: bool = False, jump_every: int = 0) -> tuple[Array, Array]:
  """``num_steps`` Langevin steps on the unit box [0, 1]^D; returns (u, acceptance).

  Each step proposes u' = u - step_size * g(u) + noise * xi, xi ~ N(0, I), with
  g = grad E, each coordinate clamped to [-grad_clamp, grad_clamp] when
  ``grad_clamp`` is given (the book's clamp: drift never moves a point more
  than step_size * grad_clamp, so a chain cannot be flung across a steep
  coastline of the energy). ``energy_fn`` maps [N, D] to [N].

  * ``metropolis=False``: the book's (unadjusted) Langevin dynamics: u' is
    taken, reflected into the box. With noise = sqrt(2 step_size) and no
    clamp it samples exp(-E) up to a discretisation bias of order step_size.
  * ``metropolis=True``: MALA: u' is accepted with the Metropolis-Hastings
    probability min(1, exp(-E(u') + E(u)) q(u | u') / q(u' | u)) for the
    Gaussian proposal q above (clamp included), and rejected outside the box,
    so exp(-E) on the box is *exactly* invariant for any step size, noise and
    clamp: large steps cross flat oceans quickly and a rejected step into the
    sea keeps a coast sharp.

  * ``jump_every=k`` (MALA only): every k-th step proposes instead a point
    uniform over the box (an independence Metropolis move, accepted with
    probability min(1, exp(E(u) - E(u')))), which also leaves exp(-E)
    invariant and lets a chain jump between continents, which local Langevin
    steps cannot cross in any affordable time.

  The acceptance returned is the mean share of accepted moves (1 for ULA).
  """
  if jump_every and not metropolis:
    raise UsageError("jump_every needs metropolis=True (the jump is a Metropolis move)")
  def drift(g):
    if grad_clamp is not None:
      g = jnp.clip(g, -grad_clamp, grad_clamp)
    return step_size * g

  def body(i, carry):
    u, e, g, accepted = carry
    key = jax.random.fold_in(rng, i)
    xi = jax.random.normal(key, u.shape, u.dtype)
    prop = u - drift(g) + noise * xi
    if not metropolis:
      prop = reflect_unit(prop)
      e_prop, g_prop = _energy_and_grad(energy_fn, prop)
      return prop, e_prop, g_prop, accepted + 1.0
    jump = (i + 1) % jump_every == 0 if jump_every else False
    if jump_every:
      uniform = jax.random.uniform(jax.random.fold_in(key, 2), u.shape, u.dtype)
      prop = jnp.where(jump, uniform, prop)
    inside = jnp.all((prop >= 0.0) & (prop <= 1.0), -1)
    e_prop, g_prop = _energy_and_grad(energy_fn, jnp.clip(prop, 0.0, 1.0))
    log_fwd = -0.5 * jnp.sum(xi**2, -1)
    log_bwd = -0.5 * jnp.sum((u - prop + drift(g_prop))**2, -1) / noise**2
    log_ratio = e - e_prop + jnp.where(jump, 0.0, log_bwd - log_fwd)
    log_uniform = jnp.log(jax.random.uniform(jax.random.fold_in(key, 1), e.shape))
    accept = inside & (log_uniform < log_ratio)
    return (jnp.where(accept[:, None], prop, u), jnp.where(accept, e_prop, e),
            jnp.where(accept[:, None], g_prop, g),
            accepted + jnp.mean(accept.astype(u.dtype)))

  e0, g0 = _energy_and_grad(energy_fn, u0)
  u, _, _, accepted = jax.lax.fori_loop(
      0, num_steps, body, (u0, e0, g0, jnp.zeros((), u0.dtype)))
  return u, accepted / max(num_steps, 1)
