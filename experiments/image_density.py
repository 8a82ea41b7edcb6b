"""Density MLE on images: exact bits per dimension on discretised Fashion-MNIST."""

from absl import flags

from genmodels import cli
from genmodels import images
from genmodels.images import config as images_config

FLAGS, __doc__ = cli.define_experiment(  # pylint: disable=redefined-builtin
    images, images_config, script="experiments/image_density.py",
    shortcuts={"model": "Model name, comma-separated names, or 'all'."})
flags.adopt_module_key_flags(cli)

if __name__ == "__main__":
  cli.run(cli.experiment_main(FLAGS))
