"""Data parallelism on JAX's own runtime: one mesh axis, ``data``.

The batch is sharded over all devices along ``data``; parameters, optimizer state
and the device-resident dataset are replicated. XLA inserts the gradient
all-reduce, so the same train step runs on one CPU core, eight GPUs or a pod slice.

Multi-process (after ``distributed.initialize``): the mesh spans every process's
devices, the same number from each, in process order. Every process holds the
same host copy of the (small) dataset, so the device-resident copy is built
from it with no cross-process traffic (``put``); for each global batch, every
process computes the same global indices from (seed, epoch) but sends only its
own slice of them, assembled into one global array with
``jax.make_array_from_process_local_data`` (``put_process_slice``). With one
process both are exactly ``jax.device_put``.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from genmodels.errors import UsageError

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D ``data`` mesh over ``num_devices`` devices (None: all of them).

  With several processes, ``num_devices`` counts devices of all processes and
  must split evenly over them: each process contributes its first
  ``num_devices / process_count`` local devices.
  """
  devices = jax.devices()
  if num_devices is not None and not 0 < num_devices <= len(devices):
    raise UsageError(f"num_devices={num_devices} but {len(devices)} devices are "
                     f"available: pick 1..{len(devices)}")
  nproc = jax.process_count()
  if nproc == 1:
    if num_devices is not None:
      devices = devices[:num_devices]
    return Mesh(np.asarray(devices), (DATA_AXIS,))
  per_process = len(devices) // nproc if num_devices is None else num_devices // nproc
  if num_devices is not None and num_devices % nproc:
    raise UsageError(f"num_devices={num_devices} must be a multiple of the "
                     f"{nproc} processes")
  chosen = []
  for p in range(nproc):  # Process order: process p holds a contiguous batch slice.
    local = sorted((d for d in devices if d.process_index == p), key=lambda d: d.id)
    chosen.extend(local[:per_process])
  return Mesh(np.asarray(chosen), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh, leading_axes: int = 0) -> NamedSharding:
  """Shards axis ``leading_axes`` (the batch axis) over the data axis."""
  return NamedSharding(mesh, P(*([None] * leading_axes), DATA_AXIS))


def put(tree, sharding: NamedSharding):
  """Host values that are the same on every process -> global arrays.

  One process: ``jax.device_put``. Several: each process fills only its own
  devices' shards from its host copy (no equality check across processes,
  which would all-gather the whole dataset).
  """
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  def one(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(one, tree)


def put_process_slice(global_value: np.ndarray, sharding: NamedSharding,
                      axis: int) -> jax.Array:
  """A host array known to every process -> a global array sharded on ``axis``.

  Each process passes only the contiguous slice of ``axis`` that its own
  devices hold (``jax.make_array_from_process_local_data``); with one process
  this is ``jax.device_put``.
  """
  if jax.process_count() == 1:
    return jax.device_put(global_value, sharding)
  index_map = sharding.addressable_devices_indices_map(global_value.shape)
  starts = [idx[axis].start or 0 for idx in index_map.values()]
  stops = [global_value.shape[axis] if idx[axis].stop is None else idx[axis].stop
           for idx in index_map.values()]
  local = np.take(global_value, np.arange(min(starts), max(stops)), axis=axis)
  return jax.make_array_from_process_local_data(sharding, local,
                                                global_value.shape)
