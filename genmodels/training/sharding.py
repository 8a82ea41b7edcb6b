"""Data parallelism on JAX's own runtime: one mesh axis, ``data``.

The batch is sharded over all devices along ``data``; parameters, optimizer state
and the device-resident dataset are replicated. XLA inserts the gradient
all-reduce, so the same train step runs on one CPU core, eight GPUs or a pod slice.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
  devices = jax.devices()
  if num_devices is not None:
    if not 0 < num_devices <= len(devices):
      raise ValueError(f"num_devices={num_devices} but {len(devices)} devices are "
                       f"available: pick 1..{len(devices)}")
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh, leading_axes: int = 0) -> NamedSharding:
  """Shards axis ``leading_axes`` (the batch axis) over the data axis."""
  return NamedSharding(mesh, P(*([None] * leading_axes), DATA_AXIS))
