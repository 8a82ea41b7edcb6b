"""Shared pytest hooks for the genmodels tests.

The suite never writes into the user's home: before any test module imports
tfds (which reads ``TFDS_DATA_DIR`` at import) or matplotlib, the controller
points them at one temporary folder that its xdist workers inherit and share,
so the workers also exercise the concurrent dataset preparation for real. The
folder is deleted when the session ends.
"""

import os
import shutil
import tempfile

if "GENMODELS_TEST_TMP" not in os.environ:  # the controller (or a plain run)
  os.environ["GENMODELS_TEST_TMP"] = tempfile.mkdtemp(prefix="genmodels-tests-")
  _OWNED_TMP = os.environ["GENMODELS_TEST_TMP"]
else:  # an xdist worker: the controller owns the folder
  _OWNED_TMP = None
os.environ["TFDS_DATA_DIR"] = os.path.join(os.environ["GENMODELS_TEST_TMP"], "tfds")
os.environ["MPLCONFIGDIR"] = os.path.join(os.environ["GENMODELS_TEST_TMP"], "matplotlib")


def pytest_unconfigure(config):
  del config
  if _OWNED_TMP:
    shutil.rmtree(_OWNED_TMP, ignore_errors=True)


def pytest_collection_finish(session):
  """Lets a test module start slow background work before any test runs.

  A module opts in with ``start_early(items)`` (given its selected tests), e.g.
  to launch an end-to-end subprocess that then overlaps with the other test
  files. Not under pytest-xdist, where every worker would start its own.
  """
  if os.environ.get("PYTEST_XDIST_WORKER"):
    return
  by_module = {}
  for item in session.items:
    module = getattr(item, "module", None)
    if module is not None and hasattr(module, "start_early"):
      by_module.setdefault(module, []).append(item)
  for module, items in by_module.items():
    module.start_early(items)
