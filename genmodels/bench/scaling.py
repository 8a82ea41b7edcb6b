"""Weak scaling of the train step from 1 to N devices (batch per device fixed).

With one CPU device the measurement runs in a subprocess of the entry point
with simulated CPU devices (``--xla_force_host_platform_device_count`` must be
set before JAX starts); they share the same cores, so the efficiency there
only shows that the sharded step runs and what partitioning costs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import jax

from . import cases as cases_lib
from . import harness

# The subprocess runs the benchmark's entry point as ``python3 -m genmodels.bench``,
# with genmodels importable from where this process imported it.
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def per_device_batch(model: str) -> int:
  return 32 if model in cases_lib.CLASSIFIER_MODELS else 1024


def measure_scaling(models, num_devices, matmul, repeats, window_seconds,
                    device_kind) -> list[dict]:
  """Weak scaling: batch per device fixed, global batch = per device x N."""
  rows = []
  available = jax.device_count()
  for model in models:
    per_device = per_device_batch(model)
    classifier = model in cases_lib.CLASSIFIER_MODELS
    base = None
    for n in num_devices:
      if n > available:
        continue
      case = cases_lib.Case(model, (28, 28, 1) if classifier else None, per_device * n,
                            "float32", 25 if classifier else 10, n)
      row, _ = harness.measure(case, matmul, repeats, window_seconds, device_kind)
      if n == 1:
        base = row["examples_per_second"]
      row["per_device_batch"] = per_device
      row["scaling_efficiency"] = (row["examples_per_second"] / (n * base)
                                   if base else None)
      rows.append(row)
      harness.log(f"scaling {case.name}: {row['examples_per_second']:.0f} ex/s, "
                  f"efficiency {row['scaling_efficiency']}")
  return rows


def in_subprocess(models, num_devices, n_sim: int, repeats: int,
                  window_seconds: float) -> dict:
  """``measure_scaling`` in a subprocess with ``n_sim`` simulated CPU devices."""
  fd, out = tempfile.mkstemp(suffix=".json", prefix="genmodels_scaling_")
  os.close(fd)
  path = os.pathsep.join(p for p in (_PACKAGE_PARENT, os.environ.get("PYTHONPATH")) if p)
  env = dict(os.environ, PYTHONPATH=path,
             XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                        f" --xla_force_host_platform_device_count={n_sim}"))
  cmd = [sys.executable, "-m", "genmodels.bench", f"--scaling_worker={out}",
         f"--scaling_models={','.join(models)}",
         f"--num_devices={','.join(map(str, num_devices))}",
         f"--repeats={repeats}", f"--window_seconds={window_seconds}",
         "--noepoch", "--noprofile"]
  try:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode:
      return {"error": proc.stderr[-2000:]}
    with open(out) as f:
      return json.load(f)
  finally:
    os.remove(out)


def worker(path: str, models, num_devices, matmul_size: int | None, repeats: int,
           window_seconds: float) -> None:
  """The subprocess's side: measure and write the rows to ``path``."""
  matmul = harness.MatmulReference(matmul_size or 2048)
  rows = measure_scaling(models, num_devices, matmul, repeats, window_seconds,
                         jax.devices()[0].device_kind)
  with open(path, "w") as f:
    json.dump({"rows": rows, "device_count": jax.device_count()}, f)
