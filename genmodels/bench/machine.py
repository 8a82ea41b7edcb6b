"""Machine facts for the benchmark: provenance's record, nominal chip peaks, a file tag.

The machine (CPU model and cores, backend, devices), the package versions and
the CPU steal come from ``genmodels.training.provenance``, as in every
results.json; this module adds what only the benchmark needs: the chips'
nominal dense peaks, the tag that names the result files, and the device's
peak memory.
"""

from __future__ import annotations

import os
import re

import jax

from genmodels.training import provenance

# Nominal dense peaks in TFLOP/s per chip, matched on jax's device_kind in this
# order (first substring that matches). fp32: the non-tensor-core rate (XLA's
# default precision may use TF32 / bf16 passes and beat it). Sources: vendor
# datasheets (NVIDIA H100/H200/A100/L4/T4, Google Cloud TPU system architecture).
NOMINAL_PEAKS_TFLOPS = (
    ("H200", {"bfloat16": 989.4, "float32": 66.9}),
    ("H100 PCIe", {"bfloat16": 756.0, "float32": 51.2}),
    ("H100", {"bfloat16": 989.4, "float32": 66.9}),
    ("A100", {"bfloat16": 312.0, "float32": 19.5}),
    ("L40S", {"bfloat16": 362.1, "float32": 91.6}),
    ("L4", {"bfloat16": 121.0, "float32": 30.3}),
    ("A10", {"bfloat16": 125.0, "float32": 31.2}),
    ("V100", {"bfloat16": None, "float32": 15.7}),
    ("T4", {"bfloat16": None, "float32": 8.1}),
    ("TPU v6", {"bfloat16": 918.0, "float32": None}),
    ("TPU v5 lite", {"bfloat16": 197.0, "float32": None}),
    ("TPU v5e", {"bfloat16": 197.0, "float32": None}),
    ("TPU v5", {"bfloat16": 459.0, "float32": None}),  # v5p
    ("TPU v4", {"bfloat16": 275.0, "float32": None}),
    ("TPU v3", {"bfloat16": 123.0, "float32": None}),
    ("TPU v2", {"bfloat16": 45.0, "float32": None}),
)


def facts() -> dict:
  """``provenance.machine()`` plus the XLA flags in force (they change the numbers)."""
  return {**provenance.machine(), "xla_flags": os.environ.get("XLA_FLAGS", "")}


def run_record(steal: provenance.StealMeter | None) -> dict:
  """provenance's ``run`` block (date, machine, versions, load, CPU steal since
  ``steal`` started), with the machine of ``facts``."""
  record = provenance.run_record(steal)
  record["machine"] = facts()
  return record


def machine_tag(info: dict) -> str:
  """The result files' name: backend and CPU (model, cores) or device kind and count."""
  if info["backend"] == "cpu":
    what = f"{info['cpu_model']}-{info['cpu_cores_usable'] or info['cpu_cores']}cores"
  else:
    what = f"{info['device_kind']}-{info['num_devices']}dev"
  slug = re.sub(r"[^a-z0-9]+", "-", f"{info['backend']}-{what}".lower())
  return re.sub(r"-(r|tm)-", "-", slug).strip("-")


def nominal_peak(device_kind: str, dtype: str) -> float | None:
  """FLOP/s of one chip, or None when the chip (or dtype) is not in the table."""
  for key, peaks in NOMINAL_PEAKS_TFLOPS:
    if key.lower() in device_kind.lower():
      tflops = peaks.get(dtype)
      return tflops * 1e12 if tflops else None
  return None


def device_peak_memory() -> int | None:
  """The largest ``peak_bytes_in_use`` of the local devices; None if none reports it."""
  peaks = []
  for d in jax.local_devices():
    try:
      stats = d.memory_stats()
    except Exception:  # pylint: disable=broad-except
      stats = None
    if stats and "peak_bytes_in_use" in stats:
      peaks.append(int(stats["peak_bytes_in_use"]))
  return max(peaks) if peaks else None
