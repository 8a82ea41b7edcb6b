"""The contract every density model keeps, and the card that names it.

A density model is a linen module that subclasses ``DensityModel`` and
overrides what it has; everything else keeps the defaults below, so the rest
of the code asks the model, never probes it (as distrax's ``Distribution``):

* ``log_prob(x) -> [N]`` and ``sample(rng, n) -> [n, ...]``: the two every
  model has (an implicit model, ``has_density = False``, only samples);
* ``training_loss(x, rng) -> (loss, metrics)``: the loss it trains on. The
  default is the mean NLL; a model trained otherwise (a denoising loss, an
  ELBO, two players, contrastive divergence) overrides it and sets
  ``trains_by_nll = False``;
* ``eval_metrics(x) -> {name: [N]}``: held-out columns, ``"nll"`` first;
* ``diagnostics(x) -> {name: scalar}``: the model's own checks for its row;
* ``cache_normalizers()``: stores a costly constant of the parameters (an
  energy model's log Z) in the ``normalizer`` collection (``with_normalizers``);
* ``num_free_params(params)``: its degrees of freedom (default: every leaf);
* ``log_prob_is_bound``: True where ``log_prob`` is a lower bound on log p.

A ``ModelCard`` says what the rest of the project needs to know about a model
by name: the module that builds it, its branch of chapter 1's taxonomy, its
family and book chapter, the name tables and figures show, its default config
unit for the density experiment and how the tests shrink it. Cards are listed
in ``genmodels/models/__init__.py`` (one line each); ``register`` adds one at
run time (a researcher's own model, or a test's).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from genmodels.errors import UsageError
from genmodels.training import experiment

Array = jax.Array

# Chapter 1's taxonomy: how a model treats the density p(x).
BRANCHES = ("tractable", "approximate", "implicit")


class DensityModel(nn.Module):
  """The base of every density model: capabilities with defaults."""

  has_density: ClassVar[bool] = True  # False: samples only (scored by samples)
  log_prob_is_bound: ClassVar[bool] = False  # log_prob <= log p(x)
  trains_by_nll: ClassVar[bool] = True  # False: ``training_loss`` is its own
  # Which bound ``log_prob`` is, in words, where ``log_prob_is_bound``: the
  # reports print it beside every number computed from it.
  bound_note: ClassVar[str] = "a lower bound on log p(x)"

  def log_prob(self, x: Array) -> Array:
    raise NotImplementedError(f"{type(self).__name__} has no log_prob")

  def sample(self, rng: Array, n: int) -> Array:
    raise NotImplementedError(f"{type(self).__name__} has no sample")

  def training_loss(self, x: Array, rng: Array) -> tuple[Array, dict]:
    """The mean NLL of the batch (nats); ``rng`` is unused."""
    del rng
    nll = -jnp.mean(self.log_prob(x))
    return nll, {"nll": nll}

  def eval_metrics(self, x: Array) -> dict[str, Array]:
    return {"nll": -self.log_prob(x)}

  def diagnostics(self, x: Array) -> dict[str, Array]:
    del x
    return {}

  def cache_normalizers(self) -> None:
    """Nothing to cache: ``log_prob`` needs no costly constant."""

  def num_free_params(self, params) -> int:
    return int(sum(np.size(p) for p in jax.tree.leaves(params)))


def with_normalizers(model: DensityModel, variables: dict) -> dict:
  """``variables`` plus the ``normalizer`` collection of ``model.cache_normalizers``
  (e.g. an energy model's log Z), so that every later ``log_prob`` call on these
  variables reads the constant instead of recomputing it; the same variables
  for a model without one. Compute it again whenever the parameters change."""
  variables = {k: v for k, v in variables.items() if k != "normalizer"}
  _, cached = model.apply(variables, method="cache_normalizers", mutable=["normalizer"])
  return {**variables, **cached}


@dataclasses.dataclass(frozen=True)
class ModelCard:
  """Everything the project knows about a model by name, in one place.

  Attributes:
    name: the model's name in configs and on the command line.
    build: the module class (or a function of the config's ``model`` fields
      returning the module).
    branch: chapter 1's taxonomy: "tractable", "approximate" or "implicit".
    family: the family, as tables show it ("normalizing flow").
    display: the model's name in tables and figures.
    chapter: the book's chapter, or None.
    unit: () -> the density experiment's default config unit (``model``,
      ``train``, ``optimizer`` blocks; see ``density_unit``).
    smoke: unit -> None, shrinks the unit for the tests' smoke config (the
      steps are shrunk for every model; this is the model's own part).
    fixed: module fields ``build`` sets itself (not config fields).
    groups: the model lists of the density experiment it belongs to
      ("ladder", "taxonomy").
  """
  name: str
  build: Callable[..., DensityModel]
  branch: str
  family: str
  display: str
  chapter: int | None = None
  unit: Callable[[], ml_collections.ConfigDict] | None = None
  smoke: Callable[[ml_collections.ConfigDict], None] | None = None
  fixed: tuple[str, ...] = ()
  groups: tuple[str, ...] = ()

  def __post_init__(self):
    if self.branch not in BRANCHES:
      raise ValueError(f"model card {self.name!r}: branch {self.branch!r} is not one "
                       f"of {', '.join(BRANCHES)}: say how the model treats p(x)")
    if not self.display or not self.family:
      raise ValueError(f"model card {self.name!r} needs a display name and a family")

  @property
  def family_label(self) -> str:
    """The family with its chapter: "normalizing flow, ch. 6"."""
    return f"{self.family}, ch. {self.chapter}" if self.chapter else self.family

  def make(self, **fields) -> DensityModel:
    return self.build(**fields)

  def default_fields(self) -> dict:
    """The module fields that have defaults, with them (the config's ``model``)."""
    cls = self.build if isinstance(self.build, type) else type(self.build())
    return {f.name: f.default for f in dataclasses.fields(cls)
            if f.name not in {"parent", "name", *self.fixed}
            and f.default is not dataclasses.MISSING}


_REGISTRY: dict[str, ModelCard] = {}


def register(*cards: ModelCard) -> None:
  """Adds cards to the registry (a name registered twice is refused)."""
  for card in cards:
    if not isinstance(card, ModelCard):
      raise TypeError(f"register takes ModelCards, got {type(card).__name__}")
    if card.name in _REGISTRY and _REGISTRY[card.name] is not card:
      raise ValueError(f"a model named {card.name!r} is registered already")
    _REGISTRY[card.name] = card


def unregister(name: str) -> None:
  _REGISTRY.pop(name, None)


def cards() -> dict[str, ModelCard]:
  """Every registered card by name, in registration order."""
  return dict(_REGISTRY)


def card(name: str) -> ModelCard:
  if name not in _REGISTRY:
    raise UsageError(f"unknown density model {name!r}; valid: {', '.join(_REGISTRY)}")
  return _REGISTRY[name]


def get_density_model(name: str, **fields) -> DensityModel:
  """The module of model ``name`` with its config's ``model`` fields."""
  c = card(name)
  try:
    return c.make(**fields)
  except TypeError as e:  # an unknown attribute: name the valid ones
    raise UsageError(f"density model {name!r}: {e}; its fields: "
                     f"{', '.join(c.default_fields()) or '(none)'}") from None


def init_variables(model: DensityModel, rng: Array, x: Array) -> dict:
  """The model's variables, initialised as its loss sees them (from data x)."""
  if not model.trains_by_nll:
    return model.init(rng, x, rng, method="training_loss")
  return model.init(rng, x, method="log_prob")


def default_units(cards_by_name: dict[str, ModelCard]) -> ml_collections.ConfigDict:
  """Each card's default unit, its ``model`` block holding every module field
  (so that any can be overridden from the command line)."""
  units = ml_collections.ConfigDict()
  for name, c in cards_by_name.items():
    if c.unit is None:
      continue
    u = c.unit()
    u.model = ml_collections.ConfigDict({**c.default_fields(), **u.model.to_dict()})
    units[name] = u
  return units


def select(spec: str, known, configured, groups: dict[str, list[str]]) -> list[str]:
  """The models a comma-separated ``spec`` of names and ``groups`` asks for, in
  order, each once; every one must be ``known`` and have a unit in ``configured``."""
  valid = ", ".join([*groups, *known])
  names = []
  for name in (n.strip() for n in spec.split(",")):
    for member in groups.get(name, [name] if name else []):
      if member not in known:
        raise UsageError(f"unknown --model {member!r}; valid: {valid}")
      if member not in configured:
        raise UsageError(f"model {member!r} has no config in config.models: add one")
      if member not in names:
        names.append(member)
  if not names:
    raise UsageError(f"--model names no model; valid: {valid}")
  return names


def density_unit(num_steps=0, learning_rate=3e-3, weight_decay=0.0, batch_size=1024,
                 **model) -> ml_collections.ConfigDict:
  """A density model's config unit with the density experiment's defaults:
  AdamW with warmup and cosine decay, gradients clipped at 1, batches of 1,024,
  ten steps per dispatch; ``model`` are the module's fields."""
  return experiment.unit(
      model,
      train=dict(num_steps=num_steps, batch_size=batch_size, log_every=100,
                 checkpoint_every=1000, eval_batch_size=8192, steps_per_dispatch=10),
      optimizer=dict(name="adamw", learning_rate=learning_rate,
                     schedule="warmup_cosine", warmup_steps=100, grad_clip=1.0,
                     weight_decay=weight_decay))
