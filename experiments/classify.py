r"""Image classification with the book's MLP and CNN (chapter 2).

  python experiments/classify.py --workdir=/tmp/cnn                    # book CNN
  python experiments/classify.py --workdir=/tmp/mlp --model=mlp
  python experiments/classify.py --workdir=/tmp/fast \
      --config=experiments/configs/classify.py:fast
  python experiments/classify.py --workdir=/tmp/c10 --dataset=cifar10  # online

Writes results.json, metrics.jsonl, TensorBoard events, Orbax checkpoints and
figures (learning curves, confusion matrix, predictions) to --workdir. Run the
same command again to resume an interrupted run.
"""

import json
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from genmodels import classification  # pylint: disable=g-import-not-at-top
from genmodels import cli
from genmodels.models import classifiers

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "configs", "classify.py"),
    "ml_collections config file (optionally :variant).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for the run's outputs.")
_MODEL = flags.DEFINE_string("model", None, "Classifier name (config: cnn).")
_DATASET = flags.DEFINE_string(
    "dataset", None, "tfds dataset name, e.g. fashion_mnist_offline, "
    "fashion_mnist, mnist, cifar10 (config: fashion_mnist_offline).")
_EPOCHS = flags.DEFINE_integer("epochs", None, "Epochs (config: 10).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Batch size (config: 32).")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", None, "Learning rate (config: 5e-4).")
_SEED = flags.DEFINE_integer("seed", None, "Seed (config: 0).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data_dir.")
_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir", None, "Folder with the Fashion-MNIST IDX files for "
    "fashion_mnist_offline (default: /usr/share/datasets/fashion-mnist).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Delete a different run in --workdir.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")


def resolve_config():
  config = _CONFIG.value
  for flag, key in ((_MODEL, "model"), (_DATASET, "dataset"), (_EPOCHS, "epochs"),
                    (_BATCH_SIZE, "batch_size"), (_LEARNING_RATE, "learning_rate"),
                    (_SEED, "seed"), (_DATA_DIR, "data_dir"),
                    (_MANUAL_DIR, "manual_dir")):
    if flag.value is not None:
      config[key] = flag.value
  if config.model not in classifiers.CLASSIFIERS:
    raise cli.UsageError(f"unknown --model {config.model!r}; valid: "
                         f"{', '.join(classifiers.CLASSIFIERS)}")
  for key in ("epochs", "batch_size", "learning_rate"):
    if config[key] <= 0:
      raise cli.UsageError(f"--{key} must be positive, got {config[key]}")
  return config


@cli.one_line_errors
def main(argv):
  if len(argv) > 1:
    raise cli.UsageError(f"unexpected arguments {argv[1:]}: pass options as --flags")
  config = resolve_config()
  workdir = cli.prepare_workdir(_WORKDIR.value, config.to_dict(),
                                overwrite=_OVERWRITE.value)
  results = classification.train_and_evaluate(config, workdir,
                                              progress=_PROGRESS.value)
  print(json.dumps(results, indent=2))


if __name__ == "__main__":
  app.run(main)
