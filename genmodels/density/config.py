r"""Density MLE on the world map: the ladder from the uniform box to spline flows.

  python experiments/density_mle.py --workdir=/tmp/density                # the ladder
  python experiments/density_mle.py --workdir=/tmp/flow --model=spline_flow
  python experiments/density_mle.py --workdir=/tmp/few \
      --config=genmodels/density/config.py:few

Each model of ``models`` is a unit: its ``model`` fields (the module's
attributes), its ``train`` block (see ``training.experiment.TRAIN_DEFAULTS``)
and its ``optimizer`` block (see ``training.optim``). ``model`` picks which to
run: "ladder" (the box to the spline flow, in order), "taxonomy" (the ladder,
then one model of each family of chapter 1's taxonomy, the TV histogram and the
ensembles) or
comma-separated names and groups (e.g. "ladder,vae,gan"). Closed-form models
(box, Gaussians) train for 0 steps: their initialisation is the MLE.

Each model's default unit is on its card (``genmodels/models``); the results
each reaches are in the README's tables.
"""

import ml_collections

from genmodels import models
from genmodels.training import experiment
from genmodels.training import optim


def ladder() -> list[str]:
  """The ladder, from the uniform box to the spline flow, in order."""
  return models.names("ladder")


def taxonomy() -> list[str]:
  """Chapter 1's taxonomy on the same map: the ladder, then one model per family."""
  return models.names("taxonomy")


def base() -> ml_collections.ConfigDict:
  """The ladder on 100,000 training points."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = "ladder"
  c.num_train = 100_000
  c.num_validation = 10_000
  c.num_test = 100_000
  c.num_samples = 1_000_000  # model samples for land precision and the yardstick
  c.models = models.default_units(models.cards())
  return c


def smoke() -> ml_collections.ConfigDict:
  """Tiny sizes and few steps, for tests (seconds)."""
  c = base()
  c.num_train, c.num_validation, c.num_test = 2000, 500, 2000
  c.num_samples = 20_000
  for name, m in c.models.items():
    if m.train.num_steps:
      m.train.update(num_steps=40, batch_size=256, log_every=10, checkpoint_every=20)
      for block in (m.optimizer.values() if optim.per_part(m.optimizer)
                    else [m.optimizer]):
        block.warmup_steps = 5
    card = models.card(name)
    if card.smoke is not None:
      card.smoke(m)
    if m.get("num_samples"):  # the models whose samples cost a chain each
      m.num_samples = 2000
  return c


def few() -> ml_collections.ConfigDict:
  """The book's "few data points" setting: 1,000 training points."""
  c = base()
  c.num_train = 1000
  for m in c.models.values():
    if m.train.num_steps:
      m.train.batch_size = 250
  return c


def quick() -> ml_collections.ConfigDict:
  """Every model at a quarter of its steps (at least 1,000) and 100,000 samples:
  the whole taxonomy in about 12 minutes on 2 cores, at worse KLs."""
  c = base()
  c.num_samples = 100_000
  for m in c.models.values():
    if m.train.num_steps > 1000:
      m.train.num_steps = max(1000, m.train.num_steps // 4)
    if m.get("num_samples"):
      m.num_samples = min(m.num_samples, c.num_samples)
  c.models.gan.model.coarse_to_fine_steps = (
      c.models.gan.model.get("coarse_to_fine_steps", 8000) // 4)
  return c


OVERRIDE_EXAMPLE = "--config.models.gmm.train.num_steps=4000"
VARIANTS = {"": base, "smoke": smoke, "few": few, "quick": quick}


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  return experiment.variant(VARIANTS, variant, "density")
