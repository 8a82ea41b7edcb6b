"""Shared pytest hooks for the genmodels tests."""

import os


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
