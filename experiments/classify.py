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

import difflib
import json
import math
import os
import re
import sys

from absl import flags
import ml_collections

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from genmodels import classification  # pylint: disable=g-import-not-at-top
from genmodels import cli
from genmodels.data import images
from genmodels.models import classifiers
from genmodels.training import distributed

_CONFIG = cli.define_config_file(
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
_NUM_DEVICES = flags.DEFINE_integer(
    "num_devices", None, "Data-parallel width: devices in the mesh, over all "
    "processes (default: all).", lower_bound=1)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Multi-process: host:port of process 0 "
    "(with --num_processes and --process_id; all share --workdir).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process: "
                                      "number of processes.", lower_bound=1)
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process: this "
                                   "process's rank, 0..num_processes-1.",
                                   lower_bound=0)


def resolve_config():
  config = _CONFIG.value
  if _MODEL.value is not None and _MODEL.value != config.model:
    if _MODEL.value not in classifiers.CLASSIFIERS:
      raise cli.UsageError(f"unknown --model {_MODEL.value!r}; valid: "
                           f"{', '.join(classifiers.CLASSIFIERS)}")
    # Keep only the config's model options that the new model has.
    fields = classifiers.CLASSIFIERS[_MODEL.value].__dataclass_fields__
    config.model_kwargs = ml_collections.ConfigDict(
        {k: v for k, v in config.model_kwargs.items() if k in fields})
  for flag, key in ((_MODEL, "model"), (_DATASET, "dataset"), (_EPOCHS, "epochs"),
                    (_BATCH_SIZE, "batch_size"), (_LEARNING_RATE, "learning_rate"),
                    (_SEED, "seed"), (_DATA_DIR, "data_dir"),
                    (_MANUAL_DIR, "manual_dir")):
    if flag.value is not None:
      config[key] = flag.value
  if config.model not in classifiers.CLASSIFIERS:
    raise cli.UsageError(f"unknown --model {config.model!r}; valid: "
                         f"{', '.join(classifiers.CLASSIFIERS)}")
  _check_dataset(config.dataset)
  for key in ("epochs", "batch_size", "learning_rate", "eval_batch_size",
              "steps_per_dispatch"):
    cli.check_positive(f"--{key}", config[key])
  for key in ("num_train", "num_test", "checkpoint_every_epochs", "weight_decay"):
    if not 0 <= config[key] < math.inf:
      raise cli.UsageError(f"{key} must be >= 0, got {config[key]}")
  if not 0 <= config.seed < 2**31:
    raise cli.UsageError(f"--seed must be in [0, 2**31), got {config.seed}")
  if not 0 <= config.label_smoothing < 1:
    raise cli.UsageError(f"label_smoothing must be in [0, 1), got {config.label_smoothing}")
  if config.schedule not in ("constant", "onecycle"):
    raise cli.UsageError(f"unknown schedule {config.schedule!r}; valid: constant, onecycle")
  if config.data_dir and os.path.exists(config.data_dir) and not os.path.isdir(
      config.data_dir):
    raise cli.UsageError(f"--data_dir {config.data_dir} is not a folder")
  if config.dataset == "fashion_mnist_offline" and config.manual_dir:
    for prefix in ("train", "t10k"):  # tfds only asserts the folder is not empty
      images.fashion_mnist_paths(config.manual_dir, prefix)
  if config.num_train and config.batch_size > config.num_train:
    raise cli.UsageError(f"batch_size={config.batch_size} is larger than the "
                         f"{config.num_train} training images: lower --batch_size")
  return config


def _check_dataset(name: str):
  """A tfds dataset name (``name[/config][:version]``) that tfds knows."""
  known = images.tfds.list_builders(with_community_datasets=False)
  base = re.split(r"[/:]", name, maxsplit=1)[0]
  if base not in known:
    close = difflib.get_close_matches(base, known, n=3)
    raise cli.UsageError(
        f"unknown --dataset {name!r}; valid: fashion_mnist_offline (local "
        f"files) or a tfds image-classification dataset such as mnist, "
        f"fashion_mnist, cifar10, cifar100"
        + (f" (did you mean {', '.join(close)}?)" if close else ""))


@cli.one_line_errors
def main(argv):
  if len(argv) > 1:
    raise cli.UsageError(f"unexpected arguments {argv[1:]}: pass options as --flags")
  # Before anything touches a device: join the other processes, if any.
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  config = resolve_config()
  if not _PROGRESS.value:
    images.tfds.disable_progress_bar()
  workdir = distributed.main_process_first(lambda: cli.prepare_workdir(
      _WORKDIR.value, config.to_dict(), overwrite=_OVERWRITE.value,
      lock=distributed.is_main_process()))
  if _NUM_DEVICES.value:  # After config.json: a run may resume on other devices.
    with config.unlocked():
      config.num_devices = _NUM_DEVICES.value
  results = classification.train_and_evaluate(config, workdir,
                                              progress=_PROGRESS.value)
  print(json.dumps(results, indent=2))


if __name__ == "__main__":
  cli.run(main)
