"""An ensemble across families: an equal-weight mixture of density models.

What the taxonomy teaches on the world map: the best single models (the spline
flow, the autoregressive model) fit 100,000 points closer than they
generalise; their training NLL sits well below their held-out NLL, and what
each memorises is its own sampling noise, shaped by its own inductive bias
(coupling layers bend space; the autoregressive model slices it). Averaging
densities whose errors are partly independent cancels part of that noise:
by Jensen's inequality the mixture's expected NLL is never worse than the
members' average, and it is better by as much as the members disagree.

Each member is trained by its own loss on the same batches (``training_loss``
is the sum of the members' losses, so no member sees another's gradient): its
NLL, or its own ``training_loss`` where it has one (an energy model's, with
its own rng), and may have its own optimizer (a block of blocks keyed by
member name). ``log_prob`` is exact: log of the mean of the members' densities.
"""

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _make_parts(members, **kwargs) -> dict:
  from genmodels import models  # pylint: disable=g-import-not-at-top
  if not members:
    raise ValueError("an ensemble needs at least one member")
  return {key: models.get_density_model(
      spec["name"], **{k: v for k, v in spec.items() if k != "name"}, **kwargs)
          for key, spec in members.items()}


class EnsembleDensity(nn.Module):
  """(1/M) sum_m p_m(x) over ``members``: {member name: {"name": model, **fields}}."""
  members: Mapping[str, Mapping[str, Any]]

  def setup(self):
    for key, part in _make_parts(self.members).items():
      setattr(self, key, part)  # the member's parameters live under its key

  def _part(self, key):
    return getattr(self, key)

  def member_log_probs(self, x: Array) -> Array:
    """[M, N]: each member's log-density, in the order of ``members``."""
    return jnp.stack([self._part(key).log_prob(x) for key in self.members])

  def cache_normalizers(self) -> None:
    """Each member's ``cache_normalizers``, where it has one (energy models)."""
    for key in self.members:
      part = self._part(key)
      if hasattr(part, "cache_normalizers"):
        part.cache_normalizers()

  def log_prob(self, x: Array) -> Array:
    return jax.nn.logsumexp(self.member_log_probs(x), axis=0) - np.log(len(self.members))

  def training_loss(self, x: Array, rng: Array):
    """The sum of the members' own losses: the mean NLL, or the member's
    ``training_loss(x, fold_in(rng, i))`` where it has one. Metrics per member,
    and the mixture's NLL when every member is trained by its NLL."""
    losses, metrics, log_probs = [], {}, []
    for i, key in enumerate(self.members):
      part = self._part(key)
      if hasattr(part, "training_loss"):
        loss, own = part.training_loss(x, jax.random.fold_in(rng, i))
        metrics.update({f"{name}_{key}": v for name, v in own.items()})
      else:
        log_probs.append(part.log_prob(x))
        loss = -jnp.mean(log_probs[-1])
        metrics[f"nll_{key}"] = loss
      losses.append(loss)
    if len(log_probs) == len(self.members):
      metrics["nll"] = -jnp.mean(jax.nn.logsumexp(jnp.stack(log_probs), axis=0)
                                 - np.log(len(self.members)))
    return sum(losses), metrics

  def sample(self, rng: Array, n: int) -> Array:
    """n points: member m draws n // M of them (the first n % M members one
    more), in a random order. Each point is marginally a draw from the
    mixture (equal weights), and no member samples points that are thrown
    away (an energy member's sample is a Langevin chain)."""
    r_order, *r_members = jax.random.split(rng, len(self.members) + 1)
    m = len(self.members)
    draws = [self._part(key).sample(r, n // m + (i < n % m))
             for i, (key, r) in enumerate(zip(self.members, r_members))]
    return jax.random.permutation(r_order, jnp.concatenate(draws))

  def num_free_params(self, params) -> int:
    total = 0
    for key, part in _make_parts(self.members, parent=None).items():
      p = params[key]
      total += (int(part.num_free_params(p)) if hasattr(part, "num_free_params")
                else int(sum(np.size(v) for v in jax.tree.leaves(p))))
    return total
