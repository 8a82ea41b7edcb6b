"""Where a number came from: the machine, the package versions, the CPU steal.

Results and benchmark files carry a ``run`` record from ``run_record`` so that
a slow number explains itself: on a shared VM the hypervisor gives part of the
CPU to other guests, and Linux counts that time as *steal* in ``/proc/stat``.
``StealMeter`` measures the share of CPU time stolen over a run.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint",
            "tensorflow-datasets", "chex", "numpy", "ml-collections")


def read_cpu_times(path: str = "/proc/stat") -> tuple[int, int] | None:
  """(steal, total) jiffies of all CPUs since boot, or None where there is no /proc/stat."""
  try:
    with open(path) as f:
      fields = f.readline().split()
  except OSError:
    return None
  if not fields or fields[0] != "cpu":
    return None
  # user nice system idle iowait irq softirq steal [guest guest_nice]: guest
  # time is already counted in user and nice.
  values = [int(v) for v in fields[1:9]]
  values += [0] * (8 - len(values))
  return values[7], sum(values)


class StealMeter:
  """Share of CPU time stolen by other guests between ``start`` and ``stop``."""

  def __init__(self, path: str = "/proc/stat"):
    self.path = path
    self._start = read_cpu_times(path)

  def fraction(self) -> float | None:
    """Stolen share of all CPU time since the meter started; None if unknown."""
    now = read_cpu_times(self.path)
    if self._start is None or now is None or now[1] <= self._start[1]:
      return None
    return (now[0] - self._start[0]) / (now[1] - self._start[1])


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def package_versions(packages=PACKAGES) -> dict[str, str | None]:
  out = {}
  for name in packages:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


def machine() -> dict:
  """CPU model and cores, memory, host, Python and the JAX backend's devices."""
  import jax  # pylint: disable=g-import-not-at-top
  info = {
      "cpu_model": cpu_model(),
      "cpu_cores": os.cpu_count(),
      "cpu_cores_usable": (len(os.sched_getaffinity(0))
                           if hasattr(os, "sched_getaffinity") else os.cpu_count()),
      "hostname": platform.node(),
      "python": platform.python_version(),
      "backend": jax.default_backend(),
      "device_kind": jax.devices()[0].device_kind,
      "num_devices": jax.device_count(),
      "num_processes": jax.process_count(),
  }
  try:
    with open("/proc/meminfo") as f:
      info["memory_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
  except (OSError, ValueError, IndexError):
    pass
  return info


def run_record(steal: StealMeter | None = None) -> dict:
  """The ``run`` block of a results file: date, machine, versions and steal."""
  record = {
      "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
      "machine": machine(),
      "versions": package_versions(),
      "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
  }
  if steal is not None:
    fraction = steal.fraction()
    record["cpu_steal_fraction"] = None if fraction is None else round(fraction, 4)
  return record


def describe(record: dict) -> str:
  """One line for reports: 'Intel Xeon ..., 2 cores, jax 0.10.2, steal 3.1%'."""
  m, v = record["machine"], record["versions"]
  steal = record.get("cpu_steal_fraction")
  steal_text = "steal unknown" if steal is None else f"CPU steal {100 * steal:.1f}%"
  return (f"{record['date']}, {m['cpu_model']}, {m['cpu_cores_usable']} cores, "
          f"{m['backend']}, jax {v.get('jax')}, flax {v.get('flax')}, {steal_text}")
