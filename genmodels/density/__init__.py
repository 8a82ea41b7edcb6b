"""Density MLE on the world map, as an experiment: config, task, report.

The package is the experiment bundle that ``training.experiment.run`` runs.
"""

from genmodels.density.report import summarize, table
from genmodels.density.task import (check, density_eval, density_loss,
                                    load_data, make_task, model_names,
                                    num_examples, tasks, unit_configs)
from genmodels.density.trained import TrainedDensity, load_density

CONFIG_FILE = __file__.replace("__init__.py", "config.py")
