"""Multi-process JAX: one call before anything touches a device.

Each process runs the same program; ``initialize`` joins them into one JAX
runtime (``jax.distributed.initialize``), after which ``jax.devices()`` lists
every process's devices and the training loop's mesh spans them all. Each
process sends only its own part of every global batch (see ``sharding.py``).

    # two processes on one machine (CPU collectives go through gloo):
    python experiments/density_mle.py --coordinator_address=127.0.0.1:12345 \
        --num_processes=2 --process_id=0 --workdir=/shared/run &
    python experiments/density_mle.py --coordinator_address=127.0.0.1:12345 \
        --num_processes=2 --process_id=1 --workdir=/shared/run

All processes must pass the same ``--workdir`` on a shared file system: Orbax
writes one checkpoint from all of them, and process 0 alone writes metrics.

Joining waits at most ``timeout_s`` (default ``DEFAULT_TIMEOUT_S``, or the
environment's ``GENMODELS_DISTRIBUTED_TIMEOUT``) for the others: a rank other
than 0 first waits, in Python, for the coordinator's port to open, then all
ranks wait for JAX's registration in a watched worker thread. Peers that never
come are a one-line UsageError naming the address and the timeout (exit 2),
not JAX's abort with a C++ stack dump after 300 s; SIGTERM or SIGINT during
the wait stops at once (``preemption.Preempted``, exit 143 / 130).

The library never reads flags: entry points pass the flag values here.
"""

from __future__ import annotations

import atexit
import math
import os
import socket
import time
from typing import Callable, TypeVar

import jax

from genmodels.errors import UsageError
from genmodels.training import preemption

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 60.0
TIMEOUT_ENV = "GENMODELS_DISTRIBUTED_TIMEOUT"
# JAX's own deadline comes this much after ours, so that ours is what fires.
_JAX_GRACE_S = 60
_PORT_POLL_S = 0.2


def timeout_seconds(timeout_s: float | None = None) -> float:
  """``timeout_s``, else $GENMODELS_DISTRIBUTED_TIMEOUT, else ``DEFAULT_TIMEOUT_S``."""
  source = "timeout_s"
  if timeout_s is None:
    value = os.environ.get(TIMEOUT_ENV)
    if not value:
      return DEFAULT_TIMEOUT_S
    source = f"${TIMEOUT_ENV}"
    try:
      timeout_s = float(value)
    except ValueError:
      raise UsageError(f"{source} must be a number of seconds, got {value!r}") from None
  if not 0 < float(timeout_s) < float("inf"):
    raise UsageError(f"{source} must be a positive number of seconds, got {timeout_s}")
  return float(timeout_s)


def _exit_without_teardown(status: int) -> None:
  """At exit, skip the runtime's teardown: with peers missing it waits for them
  for seconds and logs C++ errors after our one line. Registered last, so it
  runs first, after the entry point has printed its line. (A half-joined JAX
  runtime cannot be used again in this process anyway.)"""
  atexit.register(os._exit, status)  # pylint: disable=protected-access


def _wait_for_port(address: str, deadline: float, timeout: float, what: str) -> None:
  """Until the coordinator's port accepts a connection; interruptible, bounded."""
  host, port = address.rsplit(":", 1)
  host = host.strip("[]")
  while True:
    if (signum := preemption.requested()):
      raise preemption.Preempted(0, signum, what)
    try:
      with socket.create_connection((host, int(port)), timeout=_PORT_POLL_S * 5):
        return
    except OSError:
      pass
    if time.monotonic() >= deadline:
      raise UsageError(
          f"no coordinator at {address} after {timeout:g} s: start process 0 "
          f"(--process_id=0) with the same --coordinator_address, check the "
          f"address, or wait longer ({TIMEOUT_ENV}=SECONDS)")
    time.sleep(_PORT_POLL_S)


def initialize(coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None,
               timeout_s: float | None = None) -> bool:
  """Joins a multi-process run; a no-op (returns False) when no argument is given.

  Args:
    coordinator_address: ``host:port`` of process 0's coordinator service.
    num_processes: how many processes take part (>= 1).
    process_id: this process's rank in ``0 .. num_processes - 1``.
    timeout_s: how long to wait for all of them (see ``timeout_seconds``).

  Returns:
    True if ``jax.distributed.initialize`` was called.

  Raises:
    UsageError: some but not all three arguments are given, they are out of
      range, or the others did not join within the timeout. Must be called
      before any JAX computation or device query.
    preemption.Preempted: SIGTERM or SIGINT arrived while waiting.
  """
  given = {"coordinator_address": coordinator_address,
           "num_processes": num_processes, "process_id": process_id}
  missing = [k for k, v in given.items() if v is None or v == ""]
  if len(missing) == 3:
    return False
  if missing:
    raise UsageError(
        f"multi-process runs need all of --coordinator_address, --num_processes "
        f"and --process_id; missing: {', '.join('--' + m for m in missing)}")
  if ":" not in str(coordinator_address):
    raise UsageError(f"coordinator_address must be host:port, got "
                     f"{coordinator_address!r}")
  if int(num_processes) < 1:
    raise UsageError(f"num_processes must be >= 1, got {num_processes}")
  if not 0 <= int(process_id) < int(num_processes):
    raise UsageError(f"process_id must be in 0..{int(num_processes) - 1}, got "
                     f"{process_id}")
  port = str(coordinator_address).rsplit(":", 1)[1]
  if not port.isdigit() or not 0 < int(port) < 65536:
    raise UsageError(f"coordinator_address must be host:port with a port in "
                     f"1..65535, got {coordinator_address!r}")
  timeout = timeout_seconds(timeout_s)
  address, rank, count = str(coordinator_address), int(process_id), int(num_processes)
  what = (f"waiting for the {count} processes to join at {address} (process "
          f"{rank}, timeout {timeout:g} s)")
  deadline = time.monotonic() + timeout
  if rank != 0:  # no JAX state yet: a refusal here needs no special exit
    _wait_for_port(address, deadline, timeout, what)
  try:  # JAX's wait, in a worker thread; it cannot be undone in this process
    preemption.run_stoppable(
        lambda: jax.distributed.initialize(
            coordinator_address=address, num_processes=count, process_id=rank,
            initialization_timeout=int(math.ceil(timeout)) + _JAX_GRACE_S),
        phase=what, local=False, timeout=max(deadline - time.monotonic(), 1.0),
        on_timeout=lambda: UsageError(
            f"the {count} processes did not all join at {address} within "
            f"{timeout:g} s (this is process {rank}): start every --process_id "
            f"0..{count - 1} with the same --coordinator_address and "
            f"--num_processes, or wait longer ({TIMEOUT_ENV}=SECONDS)"))
  except UsageError:
    _exit_without_teardown(2)
    raise
  except preemption.Preempted as e:
    _exit_without_teardown(128 + e.signum)
    raise
  return True


def is_main_process() -> bool:
  """True on process 0 (the one that writes metrics, figures and results)."""
  return jax.process_index() == 0


def sync(name: str) -> None:
  """Waits until every process reaches the barrier ``name`` (no-op alone)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def main_process_first(fn: Callable[[], T]) -> T:
  """Runs ``fn`` on process 0, then, after a barrier, on the others.

  For set-up with side effects on a shared file system (creating the workdir,
  writing config.json): the others find it done and only check it.
  """
  if jax.process_count() == 1:
    return fn()
  result = fn() if is_main_process() else None
  sync("genmodels_main_process_first")
  return result if is_main_process() else fn()
