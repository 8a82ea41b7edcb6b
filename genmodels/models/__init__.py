"""Density models by name: the registry of model cards.

A density model is a ``base.DensityModel`` (the contract: ``log_prob``,
``sample`` and capabilities with defaults) with a ``base.ModelCard`` (its
name, branch of the taxonomy, family, display name and default config). To
add one, write its module with its card and list the card below: one line.
"""

from genmodels.models import autoregressive
from genmodels.models import base
from genmodels.models import continuous
from genmodels.models import density
from genmodels.models import ebm
from genmodels.models import ensemble
from genmodels.models import flows
from genmodels.models import gan
from genmodels.models import histogram
from genmodels.models import vae
from genmodels.models.base import (BRANCHES, DensityModel, ModelCard, card, cards,
                                   default_units, get_density_model, init_variables,
                                   register, select, unregister, with_normalizers)

# In the order the ladder and the taxonomy run them.
register(
    density.BOX,
    density.GAUSSIAN_DIAG,
    density.GAUSSIAN_FULL,
    density.GMM,
    flows.REALNVP,
    flows.SPLINE_FLOW,
    autoregressive.AUTOREGRESSIVE,
    continuous.FLOW_MATCHING,
    vae.VAE_CARD,
    ebm.EBM,
    continuous.DIFFUSION,
    gan.GAN_CARD,
    ensemble.ENSEMBLE,
    histogram.HISTOGRAM,
    ensemble.EBM_TV,
)


def names(group: str | None = None) -> list[str]:
  """Registered model names, in order; only those of ``group`` if given."""
  return [n for n, c in cards().items() if group is None or group in c.groups]


def default_fields(name: str) -> dict:
  """The module attributes of density model ``name`` that have defaults, with them."""
  return card(name).default_fields()
