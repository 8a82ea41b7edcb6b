r"""Representation learning: what a 2-D latent learns about pictures of cylinders.

  python experiments/latent_space.py --workdir=/tmp/latent_space
  python experiments/latent_space.py --workdir=/tmp/ls_small \
      --config=experiments/configs/latent_space.py:smoke

Renders 32 x 32 pictures of cylinders from random (radius, height), trains an
autoencoder with a 2-D latent on them with the shared loop, and asks the latent
what it learned: a linear probe to (radius, height) with held-out R^2, the volume
pi r^2 h from the latent, a decoded walk across the latent, the latent coloured
by radius and by height. Writes results.json and figures/*.png; run the same
command again to resume an interrupted run.
"""

import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from genmodels import cli  # pylint: disable=g-import-not-at-top
from genmodels import representation

_CONFIG = cli.define_config_file(
    "config", os.path.join(os.path.dirname(__file__), "configs", "latent_space.py"),
    "ml_collections config file (optionally :variant).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for the run's outputs.")
_SEED = flags.DEFINE_integer("seed", None, "Seed for data and training (config: 0).")
_NUM_TRAIN = flags.DEFINE_integer("num_train", None, "Training pictures (config: 20000).")
_NUM_STEPS = flags.DEFINE_integer("num_steps", None, "Training steps (config: 2000).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Batch size (config: 128).")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", None, "Peak learning rate.")
_PRIOR_WEIGHT = flags.DEFINE_float(
    "prior_weight", None, "Weight of the uniform-square prior (config: 10; 0: plain AE).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Delete a different run in --workdir.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")
_FIGURES = flags.DEFINE_bool("figures", True, "Write PNG figures.")


def resolve_config():
  """The config with flag overrides applied."""
  config = _CONFIG.value
  ae = config.autoencoder
  if _SEED.value is not None:
    config.seed = _SEED.value
  if _NUM_TRAIN.value is not None:
    config.num_train = _NUM_TRAIN.value
  for flag, key in ((_NUM_STEPS, "num_steps"), (_BATCH_SIZE, "batch_size"),
                    (_LEARNING_RATE, "learning_rate")):
    if flag.value is not None:
      cli.check_positive(f"--{key}", flag.value)
      ae[key] = flag.value
  if _PRIOR_WEIGHT.value is not None:
    if not 0 <= _PRIOR_WEIGHT.value < float("inf"):
      raise cli.UsageError(f"--prior_weight must be >= 0, got {_PRIOR_WEIGHT.value}")
    ae.prior_weight = _PRIOR_WEIGHT.value
  for key in ("num_train", "num_test", "probe_examples", "walk_size"):
    cli.check_positive(key, config[key])
  if config.image_size < 8:
    raise cli.UsageError(f"image_size must be at least 8, got {config.image_size}")
  if ae.batch_size > config.num_train:
    raise cli.UsageError(f"batch size {ae.batch_size} is larger than the "
                         f"{config.num_train} training pictures: lower --batch_size")
  if config.num_train < 3:
    raise cli.UsageError("num_train must be at least 3 to fit a probe")
  return config


@cli.one_line_errors
def main(argv):
  if len(argv) > 1:
    raise cli.UsageError(f"unexpected arguments {argv[1:]}: pass options as --flags")
  config = resolve_config()
  workdir = cli.prepare_workdir(_WORKDIR.value, config.to_dict(),
                                overwrite=_OVERWRITE.value)
  results = representation.run(config, workdir, progress=_PROGRESS.value,
                               figures=_FIGURES.value)
  print(representation.format_summary(results))
  print(f"\nresults: {os.path.join(workdir, 'results.json')}")


if __name__ == "__main__":
  cli.run(main)
