"""Stop at a step boundary on SIGTERM or SIGINT, with a checkpoint to resume from.

A preempted cloud VM, a scheduler's time limit and Ctrl-C all send a signal.
``handle_signals`` turns the first SIGTERM or SIGINT into a request that the
training loop reads at its next step boundary: it saves a checkpoint there and
raises ``Preempted``, and the entry point exits with one line saying how to
resume. A second signal while the first is being handled stops at once (the
last checkpoint still holds).

In a multi-process run the signal may reach some processes only, or at
different steps: ``should_stop`` makes every process agree (an all-reduce of
the flag at each boundary), so all of them save the same step.
"""

from __future__ import annotations

import contextlib
import signal
import threading

import numpy as np

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_requested: list[int] = []  # signal numbers received, in order


class Preempted(Exception):
  """Training stopped at ``step`` on a signal; a checkpoint of ``step`` exists."""

  def __init__(self, step: int, signum: int):
    self.step, self.signum = step, signum
    name = signal.Signals(signum).name
    super().__init__(f"stopped by {name} at step {step} with a checkpoint saved")


def requested() -> int | None:
  """The first signal received while handling was on, or None."""
  return _requested[0] if _requested else None


def request(signum: int = signal.SIGTERM) -> None:
  """Asks the loop to stop as if ``signum`` had arrived (for tests and callers)."""
  _requested.append(int(signum))


def clear() -> None:
  _requested.clear()


def _handler(signum, frame):
  del frame
  if _requested:  # the second signal: the user insists
    if signum == signal.SIGINT:
      raise KeyboardInterrupt
    raise SystemExit(128 + signum)
  _requested.append(signum)


@contextlib.contextmanager
def handle_signals():
  """Within this block, SIGTERM and SIGINT request a stop instead of killing.

  A no-op outside the main thread, where Python cannot install handlers.
  """
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  previous = {s: signal.getsignal(s) for s in _SIGNALS}
  clear()
  for s in _SIGNALS:
    signal.signal(s, _handler)
  try:
    yield
  finally:
    for s, h in previous.items():
      signal.signal(s, h)
    clear()


def should_stop() -> int | None:
  """The signal to stop on, agreed by all processes (None: keep going).

  With one process this is ``requested()``; with several, any process's
  request stops all of them at the same step boundary.
  """
  mine = requested() or 0
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return mine or None
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  agreed = int(np.max(multihost_utils.process_allgather(np.int32(mine))))
  return agreed or None
