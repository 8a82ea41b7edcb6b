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
import ml_collections
import numpy as np

from genmodels.errors import UsageError
from genmodels.models import autoregressive
from genmodels.models import base
from genmodels.models import ebm
from genmodels.models import flows
from genmodels.training import optim

Array = jax.Array


def _make_parts(members, **kwargs) -> dict:
  if not members:
    raise UsageError("an ensemble needs at least one member")
  return {key: base.get_density_model(
      spec["name"], **{k: v for k, v in spec.items() if k != "name"}, **kwargs)
          for key, spec in members.items()}


class EnsembleDensity(base.DensityModel):
  """(1/M) sum_m p_m(x) over ``members``: {member name: {"name": model, **fields}}."""
  trains_by_nll = False  # trains on its own training_loss
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
    """Each member's ``cache_normalizers`` (an energy model's log Z)."""
    for key in self.members:
      self._part(key).cache_normalizers()

  def log_prob(self, x: Array) -> Array:
    return jax.nn.logsumexp(self.member_log_probs(x), axis=0) - np.log(len(self.members))

  def training_loss(self, x: Array, rng: Array):
    """The sum of the members' own losses: the mean NLL, or the member's
    ``training_loss(x, fold_in(rng, i))`` where it has one. Metrics per member,
    and the mixture's NLL when every member is trained by its NLL."""
    losses, metrics, log_probs = [], {}, []
    for i, key in enumerate(self.members):
      part = self._part(key)
      if not part.trains_by_nll:
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
      total += int(part.num_free_params(params[key]))
    return total


def _ensemble_unit():
  """The autoregressive model and the spline flow, each trained by its own MLE
  with its own optimizer, averaged: their memorised noise partly cancels."""
  u = base.density_unit(num_steps=3000, batch_size=2048, members=dict(
      autoregressive=dict(name="autoregressive", order="lat_lon", num_components=32,
                          hidden=256, depth=3, num_frequencies=64),
      spline_flow=dict(name="spline_flow", num_layers=4, hidden=128, depth=2,
                       num_frequencies=32, num_bins=32)))
  u.optimizer = ml_collections.ConfigDict({
      "autoregressive": optim.optimizer_config(
          name="adamw", learning_rate=2e-3, schedule="warmup_cosine", grad_clip=1.0),
      "spline_flow": optim.optimizer_config(
          name="adamw", learning_rate=1e-3, schedule="warmup_cosine", grad_clip=1.0,
          weight_decay=0.1)})
  return u


def _shrink_ensemble(u):
  u.model.members.autoregressive.update(autoregressive.SMALL)
  u.model.members.spline_flow.update(flows.SMALL)


def _ebm_tv_unit(num_energies: int = 4) -> ml_collections.ConfigDict:
  """The best density on the map: an equal mixture of ``num_energies`` energy
  models and the total-variation histogram. Each energy model is a soft land
  indicator exp(-E) = sigmoid(f) trained by maximum likelihood (log Z by
  stratified Monte Carlo) on a short schedule, which is its early stopping
  (exact MLE memorises the training points); each draws its own init and
  log Z points, and their memorised noise partly cancels in the mixture. The
  histogram adds coasts sharp to a cell where the smooth networks blur them."""
  energy = dict(name="ebm", head="log_sigmoid", training="mle")
  members = {f"energy{i}": dict(energy) for i in range(num_energies)}
  members["histogram"] = dict(name="histogram")
  u = base.density_unit(num_steps=2000, batch_size=2048, members=members)
  blocks = {key: optim.optimizer_config(name="adamw", learning_rate=2e-3,
                                        schedule="warmup_cosine", grad_clip=1.0)
            for key in members}
  blocks["histogram"] = optim.optimizer_config(name="adam", learning_rate=0.1,
                                               schedule="warmup_cosine")
  u.optimizer = ml_collections.ConfigDict(blocks)
  u.num_samples = 100_000  # a Langevin chain per sample and energy model
  return u


def _shrink_ebm_tv(u):
  for key, member in u.model.members.items():
    member.update(dict(cells=(72, 36)) if key == "histogram"
                  else dict(ebm.SMALL, normalizer_cells=(16, 8)))


ENSEMBLE = base.ModelCard(
    "ensemble", EnsembleDensity, "tractable", "mixture across families",
    "ensemble: autoregressive + spline flow", unit=_ensemble_unit,
    smoke=_shrink_ensemble, groups=("taxonomy",))
EBM_TV = base.ModelCard(
    "ebm_tv", EnsembleDensity, "tractable",
    "mixture: energy models by MLE + histogram", "4 energy models (MLE) + TV histogram",
    unit=_ebm_tv_unit, smoke=_shrink_ebm_tv, groups=("taxonomy",))
