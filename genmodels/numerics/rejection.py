"""Rejection sampling by a learned density ratio (discriminator rejection sampling).

A GAN's discriminator, trained with the logistic (non-saturating) loss, has at
its optimum the logit D(x) = log p_data(x) / p_G(x) (Goodfellow et al. 2014).
So drawing x ~ p_G and keeping it with probability exp(D(x) - M) for a bound
M >= max D samples p_G(x) exp(D(x)) / Z = p_data(x): the generator's errors are
corrected by what the discriminator learned (Azadi et al. 2019, "Discriminator
rejection sampling"). The model stays implicit: samples, no density.

The bound M is a high quantile of D over a fixed pilot batch rather than its
maximum (the maximum of a noisy D is an outlier; clipping the few points above
M to acceptance 1 costs little bias and keeps the acceptance rate sane).
"""

from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array

PILOT = 65_536  # proposals that set the bound M (fixed: M does not depend on n)
CHUNK = 65_536  # proposals per round


def rejection_sample(rng: Array, propose: Callable[[Array, int], Array],
                     log_weight: Callable[[Array], Array], n: int,
                     quantile: float = 0.999, max_rounds: int = 10_000) -> Array:
  """n accepted points [n, d]: proposals kept with probability exp(w - M).

  ``propose(key, m) -> [m, d]`` draws proposals; ``log_weight(x) -> [m]`` is the
  log density ratio up to a constant (a discriminator's logit); M is the
  ``quantile`` of the weights of PILOT proposals (1.0: their maximum). Rounds of
  CHUNK proposals run until n are accepted (a ``lax.while_loop``: one shape, any
  acceptance rate); after ``max_rounds`` rounds, rows still empty keep plain
  proposals. Deterministic for a given ``rng``.
  """
  pilot_key, loop_key = jax.random.split(rng)
  bound = jnp.quantile(log_weight(propose(pilot_key, PILOT)), quantile)

  def body(carry):
    out, count, i = carry
    key_x, key_u = jax.random.split(jax.random.fold_in(loop_key, i))
    x = propose(key_x, CHUNK)
    log_u = jnp.log(jax.random.uniform(key_u, (CHUNK,)))
    accept = log_u < jnp.minimum(log_weight(x) - bound, 0.0)
    slot = count + jnp.cumsum(accept) - 1  # where each accepted point goes
    slot = jnp.where(accept & (slot < n), slot, n)  # n: dropped
    out = out.at[slot].set(x, mode="drop")
    return out, count + jnp.sum(accept), i + 1

  def more(carry):
    _, count, i = carry
    return (count < n) & (i < max_rounds)

  x0 = propose(pilot_key, 1)  # shape and dtype of a proposal
  out = jnp.zeros((n, *x0.shape[1:]), x0.dtype)
  out, count, _ = jax.lax.while_loop(more, body, (out, jnp.zeros((), jnp.int32),
                                                  jnp.zeros((), jnp.int32)))
  # Only when max_rounds ran out: the rows never filled take plain proposals.
  fill = lambda out: jnp.where((jnp.arange(n) >= count)[:, None],
                               propose(loop_key, n), out)
  return jax.lax.cond(count < n, fill, lambda out: out, out)
