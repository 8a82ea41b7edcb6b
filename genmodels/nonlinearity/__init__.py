"""Why activations (chapter 2), as an experiment: config, task, report."""

from genmodels.nonlinearity.report import summarize, table
from genmodels.nonlinearity.task import (bernoulli_eval, bernoulli_loss, check,
                                         load_data, make_task, num_examples,
                                         tasks, unit_configs)

CONFIG_FILE = __file__.replace("__init__.py", "config.py")
