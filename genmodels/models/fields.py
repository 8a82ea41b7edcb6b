"""Checks of a density model's config fields, in one place.

A model calls ``require(self, ...)`` where it is built (``setup``, or the
compact ``__call__``), so that a bad field raises ``UsageError`` when
``genmodels.density.task.check_model`` traces the model, before a workdir
exists, with one line that names the field, what it must be and what it got.
"""

from __future__ import annotations

import math
import numbers
from typing import Iterable

from genmodels.errors import UsageError


def _is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _fail(module, name: str, must: str, value) -> None:
  raise UsageError(f"{type(module).__name__}.{name} must be {must}, got {value!r}")


def require(module, *, positive: Iterable[str] = (), nonnegative: Iterable[str] = (),
            positive_pairs: Iterable[str] = (), positive_real: Iterable[str] = (),
            box: bool = False) -> None:
  """Raises UsageError unless the named fields of ``module`` are:

  * ``positive``: integers >= 1 (layers, widths, bins, components, steps);
  * ``nonnegative``: integers >= 0 (hidden-layer counts, frequencies);
  * ``positive_pairs``: sequences of integers >= 1 (cells per axis);
  * ``positive_real``: finite numbers > 0, or sequences of them (scales);
  * ``box``: ``lo`` and ``hi`` finite, of one length, lo < hi per axis.
  """
  for name in positive:
    v = getattr(module, name)
    if not (_is_int(v) and v >= 1):
      _fail(module, name, "a positive integer", v)
  for name in nonnegative:
    v = getattr(module, name)
    if not (_is_int(v) and v >= 0):
      _fail(module, name, "an integer >= 0", v)
  for name in positive_pairs:
    v = getattr(module, name)
    if not (isinstance(v, (tuple, list)) and v and all(_is_int(c) and c >= 1 for c in v)):
      _fail(module, name, "positive integers, one per axis", v)
  for name in positive_real:
    v = getattr(module, name)
    values = v if isinstance(v, (tuple, list)) else (v,)
    if not (values and all(isinstance(c, numbers.Real) and not isinstance(c, bool)
                           and math.isfinite(c) and c > 0 for c in values)):
      _fail(module, name, "finite and > 0" if values is not v else
            "finite numbers > 0, one per axis", v)
  if box:
    lo, hi = tuple(module.lo), tuple(module.hi)
    if not (lo and len(lo) == len(hi)
            and all(isinstance(c, numbers.Real) and math.isfinite(c) for c in lo + hi)
            and all(a < b for a, b in zip(lo, hi))):
      raise UsageError(f"{type(module).__name__}: the box lo={lo}, hi={hi} must be "
                       "finite with lo < hi on every axis: set the model's lo and hi")
