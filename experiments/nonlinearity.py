r"""Why activations: chapter 2's subscription example, a linear model vs an MLP.

  python experiments/nonlinearity.py --workdir=/tmp/nonlinearity
  python experiments/nonlinearity.py --workdir=/tmp/nl_small \
      --config=experiments/configs/nonlinearity.py:smoke

Subscribing depends on the job title *and* the visits together; neither alone
predicts it. The same loop trains a linear model (dense layers, no activations)
and an MLP (the same layers with ReLU); results.json holds both test accuracies
and NLLs, the Bayes limit and the MLP's margin; figures/ holds both decision
surfaces. Run the same command again to resume an interrupted run.
"""

import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from genmodels import cli  # pylint: disable=g-import-not-at-top
from genmodels import nonlinearity

_CONFIG = cli.define_config_file(
    "config", os.path.join(os.path.dirname(__file__), "configs", "nonlinearity.py"),
    "ml_collections config file (optionally :variant).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for the run's outputs.")
_SEED = flags.DEFINE_integer("seed", None, "Seed for data and training (config: 0).")
_NUM_TRAIN = flags.DEFINE_integer("num_train", None, "Training visitors (config: 20000).")
_NUM_STEPS = flags.DEFINE_integer("num_steps", None, "Training steps of each model.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Batch size of each model.")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", None, "Peak learning rate.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Delete a different run in --workdir.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")
_FIGURES = flags.DEFINE_bool("figures", True, "Write PNG figures.")


def resolve_config():
  """The config with flag overrides applied."""
  config = _CONFIG.value
  if _SEED.value is not None:
    config.seed = _SEED.value
  if _NUM_TRAIN.value is not None:
    config.num_train = _NUM_TRAIN.value
  for flag, key in ((_NUM_STEPS, "num_steps"), (_BATCH_SIZE, "batch_size"),
                    (_LEARNING_RATE, "learning_rate")):
    if flag.value is not None:
      cli.check_positive(f"--{key}", flag.value)
      for m in config.models.values():
        m[key] = flag.value
  for key in ("num_train", "num_test"):
    cli.check_positive(key, config[key])
  for m in config.models.values():
    if m.batch_size > config.num_train:
      raise cli.UsageError(f"batch size {m.batch_size} is larger than the "
                           f"{config.num_train} training visitors: lower --batch_size")
  return config


@cli.one_line_errors
def main(argv):
  if len(argv) > 1:
    raise cli.UsageError(f"unexpected arguments {argv[1:]}: pass options as --flags")
  config = resolve_config()
  workdir = cli.prepare_workdir(_WORKDIR.value, config.to_dict(),
                                overwrite=_OVERWRITE.value)
  results = nonlinearity.run(config, workdir, progress=_PROGRESS.value,
                             figures=_FIGURES.value)
  print(nonlinearity.format_table(results))
  print(f"\nresults: {os.path.join(workdir, 'results.json')}")


if __name__ == "__main__":
  cli.run(main)
