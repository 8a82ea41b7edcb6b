"""Why activations: chapter 2's subscription example, a linear model against an MLP."""

from absl import flags

from genmodels import cli
from genmodels import nonlinearity
from genmodels.nonlinearity import config as nonlinearity_config

FLAGS, __doc__ = cli.define_experiment(  # pylint: disable=redefined-builtin
    nonlinearity, nonlinearity_config, script="experiments/nonlinearity.py")
flags.adopt_module_key_flags(cli)

if __name__ == "__main__":
  cli.run(cli.experiment_main(FLAGS))
