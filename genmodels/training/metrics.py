"""Metrics written where researchers look: JSON lines and TensorBoard events.

A line of metrics.jsonl that is not a record (a hand edit, a disk error) is
skipped with one warning and the records after it are kept; a torn last line
(a killed run) is skipped quietly. TensorBoard events are written in the
caller's thread, so a disk that refuses them raises one ``OSError`` there,
not tracebacks from a writer thread and an exit hook.
"""

import itertools
import json
import math
import os
import time

from absl import logging
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


_WRITERS = itertools.count()


class _EventWriter:
  """TensorBoard scalars, written synchronously (no thread, no atexit hook).

  tensorboardX's SummaryWriter writes from a thread and flushes again at exit:
  a full or read-only disk there is a traceback per attempt, after the run's
  one-line error.
  """
  FLUSH_SECONDS = 10.0

  def __init__(self, logdir: str, purge_step: int | None):
    from tensorboardX import summary  # pylint: disable=g-import-not-at-top
    from tensorboardX.event_file_writer import EventsWriter  # pylint: disable=g-import-not-at-top
    from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
    self._summary, self._pb = summary, event_pb2
    os.makedirs(logdir, exist_ok=True)
    # One file per writer: tensorboardX names files by the second alone, and a
    # second writer within it (a quick resume) would overwrite the first's.
    self._writer = EventsWriter(os.path.join(logdir, "events"),
                                f".{os.getpid()}.{next(_WRITERS)}")
    if purge_step is not None:  # TensorBoard drops the old events from this step on
      self._writer.write_event(event_pb2.Event(
          step=purge_step, wall_time=time.time(), file_version="brain.Event:2"))
      self._writer.write_event(event_pb2.Event(
          step=purge_step, wall_time=time.time(),
          session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
    self._writer.flush()
    self._flushed = time.monotonic()

  def add_scalars(self, step: int, scalars: dict[str, float]):
    for tag, value in scalars.items():
      self._writer.write_event(self._pb.Event(
          step=int(step), wall_time=time.time(),
          summary=self._summary.scalar(tag, value)))
    if time.monotonic() - self._flushed > self.FLUSH_SECONDS:  # flush fsyncs
      self._writer.flush()
      self._flushed = time.monotonic()

  def close(self):
    self._writer.close()  # flushes


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
        self._tb = _EventWriter(os.path.join(workdir, "tensorboard"),
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
      self._tb.add_scalars(step, {
          f"{split}/{k}": float(v) for k, v in metrics.items()
          if np.ndim(v) == 0 and np.isfinite(float(v))})

  def close(self):
    if self._tb is not None:
      tb, self._tb = self._tb, None
      tb.close()


def _is_record(r) -> bool:
  return (isinstance(r, dict) and isinstance(r.get("step"), int)
          and not isinstance(r["step"], bool) and isinstance(r.get("split"), str))


def read_metrics(path: str) -> list[dict]:
  """Records of a metrics.jsonl file; a line that is not one is skipped.

  A torn last line (a run killed mid-write) is skipped quietly; any other bad
  line is reported in one warning, and the records after it are kept.
  """
  if not os.path.exists(path):
    return []
  with open(path, "rb") as f:
    text = f.read().decode("utf-8", errors="replace")
  lines = text.split("\n")
  torn = lines.pop()  # "" after a final newline; else a line cut by a kill
  records, bad = [], []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      r = json.loads(line)
    except ValueError:
      r = None
    if _is_record(r):
      records.append(r)
    else:
      bad.append((number, line))
  if torn.strip():
    try:
      r = json.loads(torn)
    except ValueError:
      r = None
    if _is_record(r):
      records.append(r)  # complete, only its newline missing
  if bad:
    number, line = bad[0]
    shown = line if len(line) <= 60 else line[:57] + "..."
    logging.warning("%s: skipped %d line(s) that are not metric records (line %d: "
                    "%r%s); kept the other %d records", path, len(bad), number,
                    shown, ", ..." if len(bad) > 1 else "", len(records))
  return records
