"""Density MLE on the world map: chapter 1's generative hello world."""

from absl import flags

from genmodels import cli
from genmodels import density
from genmodels.density import config as density_config

FLAGS, __doc__ = cli.define_experiment(  # pylint: disable=redefined-builtin
    density, density_config, script="experiments/density_mle.py",
    shortcuts={"model": "Model name, comma-separated names, or 'ladder' for all."})
flags.adopt_module_key_flags(cli)

if __name__ == "__main__":
  cli.run(cli.experiment_main(FLAGS))
