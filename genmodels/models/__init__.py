"""Models by name: density models (``log_prob``, ``sample``) and classifiers.

To add a density model, write a linen module with ``log_prob(x)`` and
``sample(rng, n)`` and add one line to ``DENSITY_MODELS``; its config's
``model`` fields become the module's attributes. Optional methods:
``training_loss(x, rng) -> (loss, metrics)`` for a model not trained by
maximum likelihood, ``eval_metrics(x) -> {name: [N]}`` (with "nll") for more
held-out columns than the NLL, ``diagnostics(x) -> {name: scalar}`` for the
results row, ``cache_normalizers()`` for a model whose ``log_prob`` computes a
costly constant (an energy model's log Z; see ``with_normalizers``). An
implicit model (samples only) sets ``has_density = False``.
"""

import dataclasses

from genmodels.models.autoregressive import AutoregressiveDensity
from genmodels.models.continuous import Diffusion, FlowMatching
from genmodels.models.density import Gaussian, GaussianMixture, UniformBox
from genmodels.models.ebm import EnergyModel
from genmodels.models.ensemble import EnsembleDensity
from genmodels.models.flows import RealNVP, SplineFlow
from genmodels.models.gan import GAN
from genmodels.models.histogram import TVHistogram
from genmodels.models.vae import VAE

DENSITY_MODELS = {
    "box": UniformBox,
    "gaussian_diag": lambda **kw: Gaussian(diagonal=True, **kw),
    "gaussian_full": Gaussian,
    "gmm": GaussianMixture,
    "realnvp": RealNVP,
    "spline_flow": SplineFlow,
    "autoregressive": AutoregressiveDensity,
    "vae": VAE,
    "gan": GAN,
    "ebm": EnergyModel,
    "flow_matching": FlowMatching,
    "diffusion": Diffusion,
    "ensemble": EnsembleDensity,
    "histogram": TVHistogram,
    "ebm_tv": EnsembleDensity,
}


def has_density(model) -> bool:
  """False for an implicit model (a GAN): samples, no ``log_prob``."""
  return getattr(model, "has_density", True)


def with_normalizers(model, variables: dict) -> dict:
  """``variables`` plus the ``normalizer`` collection of ``model.cache_normalizers``
  (e.g. an energy model's log Z), so that every later ``log_prob`` call on these
  variables reads the constant instead of recomputing it; unchanged for a model
  without one. Compute it again whenever the parameters change."""
  if not hasattr(model, "cache_normalizers"):
    return variables
  variables = {k: v for k, v in variables.items() if k != "normalizer"}
  _, cached = model.apply(variables, method="cache_normalizers", mutable=["normalizer"])
  return {**variables, **cached}


def default_fields(name: str) -> dict:
  """The module attributes of density model ``name`` that have defaults, with them."""
  cls = DENSITY_MODELS[name]
  fixed = {}
  if name == "gaussian_diag":
    cls, fixed = Gaussian, {"diagonal"}
  return {f.name: f.default for f in dataclasses.fields(cls)
          if f.name not in {"parent", "name", *fixed}
          and f.default is not dataclasses.MISSING}


def get_density_model(name: str, **kwargs):
  if name not in DENSITY_MODELS:
    raise ValueError(f"unknown density model {name!r}; valid: "
                     f"{', '.join(DENSITY_MODELS)}")
  try:
    return DENSITY_MODELS[name](**kwargs)
  except TypeError as e:  # an unknown attribute: name the valid ones
    raise ValueError(f"density model {name!r}: {e}; its fields: "
                     f"{', '.join(default_fields(name)) or '(none)'}") from None
