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

The same flag stops every other long phase of a run (the evaluations, a
report's sampling and scoring, the figures, the wait for the other
processes): ``stop_if_requested`` is the check between a phase's pieces, and
``run_stoppable`` runs one long call (numpy, a C++ wait) in a worker thread
while the main thread watches the flag, so even that stops within a fraction
of a second. Either raises ``Preempted`` naming the phase and the step of the
newest checkpoint (``note_checkpoint``): a re-run resumes from there and redoes
the phase.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from typing import Any, Callable

import numpy as np

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_requested: list[int] = []  # signal numbers received, in order
_checkpointed = [0]  # the step of the newest checkpoint (``note_checkpoint``)
POLL_SECONDS = 0.1  # how often ``run_stoppable`` looks at the flag


class Preempted(Exception):
  """A run stopped on a signal; a checkpoint of ``step`` exists.

  ``phase`` None: training stopped at ``step`` and saved it. Otherwise what was
  running (an evaluation, sampling, the figures): a re-run redoes it from the
  checkpoint at ``step``.
  """

  def __init__(self, step: int, signum: int, phase: str | None = None):
    self.step, self.signum, self.phase = step, signum, phase
    name = signal.Signals(signum).name
    if phase is None:
      super().__init__(f"stopped by {name} at step {step} with a checkpoint saved")
    else:
      super().__init__(f"stopped by {name} while {phase}")


def requested() -> int | None:
  """The first signal received while handling was on, or None."""
  return _requested[0] if _requested else None


def request(signum: int = signal.SIGTERM) -> None:
  """Asks the loop to stop as if ``signum`` had arrived (for tests and callers)."""
  _requested.append(int(signum))


def clear() -> None:
  _requested.clear()
  _checkpointed[0] = 0


def note_checkpoint(step: int) -> None:
  """Records that a checkpoint of ``step`` exists (the step a stop resumes from)."""
  _checkpointed[0] = int(step)


def checkpoint_step() -> int:
  return _checkpointed[0]


def _alone() -> bool:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_count() == 1


def stop_if_requested(phase: str, *, local: bool = False) -> None:
  """Raises ``Preempted`` (what was running: ``phase``) if a stop was asked for.

  The check between the pieces of a long phase outside the training steps.
  ``local``: the phase runs on process 0 alone (a report): with one process
  it reads this process's flag; with several it does nothing, since the
  processes could not agree, and the check all of them make after the phase
  stops them. Otherwise all processes agree (``should_stop``).
  """
  if local:
    signum = requested() if _alone() else None
  else:
    signum = should_stop()
  if signum:
    raise Preempted(checkpoint_step(), signum, phase)


class _Worker(threading.Thread):
  def __init__(self, fn, args):
    super().__init__(daemon=True, name="genmodels-stoppable")
    self.fn, self.args, self.result, self.error = fn, args, None, None

  def run(self):
    try:
      self.result = self.fn(*self.args)
    except BaseException as e:  # pylint: disable=broad-except
      self.error = e


def run_stoppable(fn: Callable[..., Any], *args, phase: str, local: bool = True,
                  timeout: float | None = None,
                  on_timeout: Callable[[], BaseException] | None = None) -> Any:
  """``fn(*args)`` in a worker thread; a stop request raises ``Preempted`` at once.

  For one long call that releases the GIL (numpy over millions of points, a
  C++ wait) and has no pieces to check between. On a request the worker is
  left to the process's exit (it is a daemon thread; ``fn`` must not write
  files). ``local`` as in ``stop_if_requested``: with several processes a
  local phase just runs ``fn``. ``timeout`` seconds (None: none) raise
  ``on_timeout()``. Never touches JAX unless ``local`` (so it can wait for
  ``jax.distributed.initialize``).
  """
  if local and not _alone():
    return fn(*args)
  worker = _Worker(fn, args)
  worker.start()
  deadline = None if timeout is None else time.monotonic() + timeout
  while worker.is_alive():
    if (signum := requested()):
      raise Preempted(checkpoint_step(), signum, phase)
    if deadline is not None and time.monotonic() >= deadline:
      raise on_timeout() if on_timeout is not None else TimeoutError(
          f"{phase}: no result after {timeout:g} s")
    worker.join(POLL_SECONDS)
  if worker.error is not None:
    raise worker.error
  return worker.result


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
