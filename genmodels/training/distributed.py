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

The library never reads flags: entry points pass the flag values here.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import jax

from genmodels.errors import UsageError

T = TypeVar("T")


def initialize(coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Joins a multi-process run; a no-op (returns False) when no argument is given.

  Args:
    coordinator_address: ``host:port`` of process 0's coordinator service.
    num_processes: how many processes take part (>= 1).
    process_id: this process's rank in ``0 .. num_processes - 1``.

  Returns:
    True if ``jax.distributed.initialize`` was called.

  Raises:
    ValueError: some but not all three arguments are given, or they are out
      of range. Must be called before any JAX computation or device query.
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
  jax.distributed.initialize(coordinator_address=str(coordinator_address),
                             num_processes=int(num_processes),
                             process_id=int(process_id))
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
