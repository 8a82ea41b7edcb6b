"""Metrics written where researchers look: JSON lines and TensorBoard events."""

import json
import math
import os

import numpy as np


def to_python(value):
  """JSON-friendly scalars: numpy/jax numbers to floats, non-finite kept as strings."""
  if isinstance(value, dict):
    return {k: to_python(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [to_python(v) for v in value]
  if hasattr(value, "item") and np.ndim(value) == 0:
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  return value


def write_json_atomic(path: str, obj, indent: int | None = 2) -> str:
  """Writes ``obj`` (numpy scalars allowed) as JSON; a kill mid-write keeps the old file."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(to_python(obj), f, indent=indent)
  os.replace(tmp, path)
  return path


class MetricWriter:
  """Appends ``{"step": s, "split": ..., **metrics}`` records to metrics.jsonl.

  On resume from step s, records after s are dropped first, so a resumed run's
  file equals that of a run never interrupted. A (step, split) record is kept
  once: writing it again replaces it (a run resumed from its final checkpoint
  evaluates the final step again). TensorBoard events (tensorboardX) are
  written beside it when the package is installed.
  """

  def __init__(self, workdir: str, resume_step: int = 0, tensorboard: bool = True):
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.records = [r for r in read_metrics(self.path) if r["step"] <= resume_step]
    self._rewrite()
    self._tb = None
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"),
                                 purge_step=resume_step + 1 if resume_step else None)
      except ImportError:
        pass

  def _rewrite(self):
    """Writes all records atomically: a kill mid-write leaves the old file."""
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      for r in self.records:
        f.write(json.dumps(r) + "\n")
    os.replace(tmp, self.path)

  def write(self, step: int, split: str, metrics: dict):
    record = {"step": int(step), "split": split, **to_python(metrics)}
    same = [i for i, r in enumerate(self.records)
            if r["step"] == record["step"] and r["split"] == split]
    if same:
      self.records[same[-1]] = record
      self._rewrite()
    else:
      self.records.append(record)
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for k, v in metrics.items():
        if np.ndim(v) == 0 and np.isfinite(float(v)):
          self._tb.add_scalar(f"{split}/{k}", float(v), step)

  def close(self):
    if self._tb is not None:
      self._tb.close()


def read_metrics(path: str) -> list[dict]:
  """Records of a metrics.jsonl file; a torn last line (a killed run) is skipped."""
  if not os.path.exists(path):
    return []
  records = []
  with open(path) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        break
  return records
