"""Representation learning: what an autoencoder's 2-D latent learns about cylinders."""

from absl import flags

from genmodels import cli
from genmodels import latent
from genmodels.latent import config as latent_config

FLAGS, __doc__ = cli.define_experiment(  # pylint: disable=redefined-builtin
    latent, latent_config, script="experiments/latent_space.py")
flags.adopt_module_key_flags(cli)

if __name__ == "__main__":
  cli.run(cli.experiment_main(FLAGS))
