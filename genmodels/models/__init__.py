"""Models by name: density models (``log_prob``, ``sample``) and classifiers.

To add a density model, write a linen module with ``log_prob(x)`` and
``sample(rng, n)`` and add one line to ``DENSITY_MODELS``; its config's
``model`` fields become the module's attributes.
"""

from genmodels.models.autoregressive import AutoregressiveDensity
from genmodels.models.density import Gaussian, GaussianMixture, UniformBox
from genmodels.models.ebm import EnergyModel
from genmodels.models.ensemble import EnsembleDensity
from genmodels.models.flows import RealNVP, SplineFlow

DENSITY_MODELS = {
    "box": UniformBox,
    "gaussian_diag": lambda **kw: Gaussian(diagonal=True, **kw),
    "gaussian_full": Gaussian,
    "gmm": GaussianMixture,
    "realnvp": RealNVP,
    "spline_flow": SplineFlow,
    "autoregressive": AutoregressiveDensity,
    "ebm": EnergyModel,
    "ensemble": EnsembleDensity,
}


def get_density_model(name: str, **kwargs):
  if name not in DENSITY_MODELS:
    raise ValueError(f"unknown density model {name!r}; valid: "
                     f"{', '.join(DENSITY_MODELS)}")
  return DENSITY_MODELS[name](**kwargs)
