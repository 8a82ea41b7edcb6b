r"""Density MLE on images: exact bits per dimension on discretised Fashion-MNIST.

  python experiments/image_density.py --workdir=/tmp/image            # the book's 16x16, 4 levels
  python experiments/image_density.py --workdir=/tmp/full \
      --config=genmodels/images/config.py:full                       # 28x28, 256 levels
  python experiments/image_density.py --workdir=/tmp/smoke \
      --config=genmodels/images/config.py:smoke                      # synthetic, seconds

The pixels are the sample space: integer images in {0..K-1}^(S x S), so every
model's log-likelihood is an exact log-probability mass and its test bits per
dimension (mean NLL / (S^2 ln 2)) are exact, with no dequantization. The
discretisation is ``genmodels/images/data.py``'s: exact area resize from
28x28 to S x S, then k = floor(mean grey * K / 256).

Fields: ``dataset`` ("fashion_mnist_offline": the Debian files in
``manual_dir``, default /usr/share/datasets/fashion-mnist; "synthetic":
Gaussian blobs drawn from the seed), ``image_size`` S and ``num_levels`` K,
``num_train`` (0: the whole training split less validation),
``num_validation`` (the end of the training split), ``num_test`` (0: the whole
test split), ``model`` ("all" or comma-separated names), and ``models``: each
model's unit (its ``model`` fields, ``train`` and ``optimizer`` blocks).
"""

import ml_collections

from genmodels.images import cards
from genmodels.images import data as data_lib
from genmodels.images import yardstick
from genmodels.models import base as models_base
from genmodels.training import experiment


def base() -> ml_collections.ConfigDict:
  """The book's chapter-5 setting: 16x16 Fashion-MNIST with 4 grey levels."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.dataset = "fashion_mnist_offline"
  c.manual_dir = data_lib.FASHION_MNIST_DIR
  c.image_size, c.num_levels = data_lib.SETTINGS["book"]
  c.num_train = 0  # the whole training split less validation: 55,000
  c.num_validation = 5000
  c.num_test = 0  # the whole test split: 10,000
  c.model = "all"
  c.num_figure_samples = 64
  # The sample yardstick: N samples per model against N training images (and
  # the test split's floor at the same N), in the features of a classifier
  # trained for ``yardstick_steps`` with the seed and cached in the workdir.
  # 0: no sample metrics.
  c.num_metric_samples = 1000
  c.yardstick_steps = yardstick.TRAIN_STEPS
  c.models = models_base.default_units(cards.IMAGE_CARDS)
  return c


def full() -> ml_collections.ConfigDict:
  """The raw data: 28x28 with 256 grey levels."""
  c = base()
  c.image_size, c.num_levels = data_lib.SETTINGS["full"]
  return c


def smoke() -> ml_collections.ConfigDict:
  """Synthetic 4x4 images with 4 levels, 512 training / 256 test images: seconds."""
  c = base()
  c.dataset = "synthetic"
  c.image_size, c.num_levels = 4, 4
  # Validation as large as test: the evaluations compile once for both.
  c.num_train, c.num_validation, c.num_test = 512, 256, 256
  c.num_figure_samples = 16
  c.num_metric_samples, c.yardstick_steps = 128, 50
  for name, u in c.models.items():
    if u.train.num_steps:
      u.train.update(num_steps=40, batch_size=128, log_every=10, checkpoint_every=40)
      u.optimizer.warmup_steps = 5
    card = cards.card(name)
    if card.smoke is not None:
      card.smoke(u)
  return c


OVERRIDE_EXAMPLE = "--config.models.pixel_mixture.model.num_components=64"
VARIANTS = {"": base, "book": base, "full": full, "smoke": smoke}


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  return experiment.variant(VARIANTS, variant, "image density")
