"""Image classification with the book's MLP and CNN (chapter 2), on any tfds dataset."""

from absl import flags

from genmodels import cli
from genmodels import classify
from genmodels.classify import config as classify_config

FLAGS, __doc__ = cli.define_experiment(  # pylint: disable=redefined-builtin
    classify, classify_config, script="experiments/classify.py",
    shortcuts={"model": "Classifier name: mlp, cnn or cnn_fast.",
               "dataset": "tfds dataset: fashion_mnist_offline (local files), "
                          "fashion_mnist, mnist, cifar10, ..."})
flags.adopt_module_key_flags(cli)

if __name__ == "__main__":
  cli.run(cli.experiment_main(FLAGS))
