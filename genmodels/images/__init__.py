"""Density MLE on images, as an experiment: data, models, config, task, report.

The package is the experiment bundle that ``training.experiment.run`` runs
(``experiments/image_density.py``): Fashion-MNIST (or synthetic blobs)
discretised to K grey levels, discrete image models with exact likelihoods
(``cards.IMAGE_CARDS``), scored in exact bits per dimension.
"""

from genmodels.images.report import summarize, table
from genmodels.images.task import (check, load_data, make_task, model_names,
                                   num_examples, tasks, unit_configs)

CONFIG_FILE = __file__.replace("__init__.py", "config.py")
