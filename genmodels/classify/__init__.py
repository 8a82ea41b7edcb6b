"""Image classification (chapter 2), as an experiment: config, task, report."""

from genmodels.classify.report import summarize, table
from genmodels.classify.task import (check, load_data, make_task, num_examples,
                                     resolve, tasks, unit_configs)

CONFIG_FILE = __file__.replace("__init__.py", "config.py")
