"""Representation learning (chapter 1's cylinders), as an experiment: config, task, report."""

from genmodels.latent.report import analyse, summarize, table
from genmodels.latent.task import (TrainedAutoencoder, autoencoder_loss, check,
                                   load_data, make_task, num_examples,
                                   prior_matched_pca_init,
                                   sliced_wasserstein_uniform, tasks,
                                   unit_configs)

CONFIG_FILE = __file__.replace("__init__.py", "config.py")
