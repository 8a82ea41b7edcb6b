"""The report writer: the benchmark's result as JSON and markdown, with its provenance.

Every result carries ``run`` (``machine.run_record``: the machine's CPU model
and cores, backend and devices, the package versions, the load average and
the share of CPU time stolen by other guests while the benchmark ran), plus
``started`` and ``load_average_at_start``, so a slow number explains itself.
"""

from __future__ import annotations

import json
import math
import os
import tempfile

from genmodels.training import metrics as metrics_lib


def fmt(x, spec=".3g", none="n/a"):
  if x is None or (isinstance(x, float) and not math.isfinite(x)):
    return none
  return format(x, spec)


def provenance_lines(result: dict) -> list[str]:
  """Bullets: machine, versions, dates, load and CPU steal of the run."""
  run = result["run"]
  m, v = run["machine"], run["versions"]
  steal = run.get("cpu_steal_fraction")
  load0 = (result.get("load_average_at_start") or [float("nan")])[0]
  load1 = (run.get("load_average") or [float("nan")])[0]
  versions = ", ".join(f"{k} {v[k]}" for k in ("jax", "jaxlib", "flax", "optax", "numpy")
                       if v.get(k))
  lines = [
      f"- backend **{m['backend']}**, device kind `{m['device_kind']}`, "
      f"{m['num_devices']} device(s); CPU: {m['cpu_model']}, "
      f"{m['cpu_cores_usable']} usable cores of {m['cpu_cores']}"
      + (f", {m['memory_gib']} GiB" if m.get("memory_gib") else ""),
      f"- {versions}, Python {m['python']}; {result.get('started', '?')} to {run['date']}",
      f"- CPU steal during the run: "
      + ("unknown (no /proc/stat)" if steal is None else
         f"**{100 * steal:.1f}%** of CPU time went to other guests of the VM")
      + f"; load average (1 min) at start {load0:.1f}, at end {load1:.1f}",
  ]
  if m.get("xla_flags"):
    lines.append(f"- XLA_FLAGS: `{m['xla_flags']}`")
  return lines


def _cases_table(result: dict) -> list[str]:
  lines = ["## Train steps", "",
           "k = train steps per dispatch (lax.scan); k0 = one `make_train_step` "
           "per dispatch on a fixed batch, no scan. MFLOP/step: the model's, as "
           "XLA counts it with lax.conv (for cnn_im2col too). % matmul: achieved "
           "FLOP/s over the same-process matmul of the same dtype.", "",
           "| model | input | batch | dtype | k | compile s | ms/step | steps/s | "
           "examples/s | MFLOP/step | GFLOP/s | % matmul | % peak | temp MB |",
           "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in result["cases"]:
    if "error" in r:
      lines.append(f"| {r['model']} | {r['input']} | {r['batch_size']} | {r['dtype']} | "
                   f"{r['steps_per_dispatch']} | {r['error']} |||||||||")
      continue
    shape = "x".join(map(str, r["input_shape"])) if r["input_shape"] else "2-D"
    peak = r["fraction_of_nominal_peak"]
    temp = r["compiled_memory"].get("temp_size_in_bytes")
    lines.append(
        f"| {r['model']} | {shape} | {r['batch_size']} | {r['dtype']} | "
        f"{r['steps_per_dispatch']} | {r['compile_seconds']:.1f} | "
        f"{r['step_seconds_median'] * 1e3:.2f} | {r['steps_per_second']:.1f} | "
        f"{r['examples_per_second']:,.0f} | {r['useful_flops_per_step'] / 1e6:,.1f} | "
        f"{r['achieved_flops_per_second'] / 1e9:.2f} | "
        f"{100 * r['fraction_of_matmul']:.1f}% | "
        f"{fmt(peak and 100 * peak, '.1f')}{'%' if peak else ''} | "
        f"{fmt(temp and temp / 2**20, '.1f')} |")
  if result.get("device_peak_memory_bytes") is not None:
    lines += ["", f"Device peak memory over the run: "
              f"{result['device_peak_memory_bytes'] / 2**30:.2f} GiB."]
  else:
    lines += ["", "Peak memory: this backend does not report device memory "
              "statistics; `temp MB` is the compiled program's scratch space "
              "(XLA memory analysis)."]
  return lines


def _scaling_section(scaling: dict) -> list[str]:
  if scaling.get("rows"):
    lines = ["", "## Scaling (weak: batch per device fixed)", "",
             scaling.get("note", ""), "",
             "| model | devices | global batch | ms/step | examples/s | efficiency |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in scaling["rows"]:
      lines.append(f"| {r['model']} | {r['num_devices']} | {r['batch_size']} | "
                   f"{r['step_seconds_median'] * 1e3:.2f} | {r['examples_per_second']:,.0f} | "
                   f"{fmt(r['scaling_efficiency'], '.2f')} |")
    return lines
  if scaling.get("error") or scaling.get("note"):
    return ["", "## Scaling", "", scaling.get("note") or scaling.get("error", "")[:500]]
  return []


def _profile_sections(profiles: list[dict]) -> list[str]:
  lines = []
  for p in profiles:
    lines += ["", f"## Where the time goes: {p['case']}", ""]
    if "error" in p:
      lines.append(f"profile failed: {p['error'][:500]}")
      continue
    lines += [f"Wall time per step while tracing: {p['wall_ms_per_step_while_tracing']:.1f} "
              f"ms; op time summed over worker threads: {p['op_ms_per_step_total']:.1f} ms.",
              "", "| kind of op | ms/step |", "|---|---:|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in p["op_ms_per_step_by_kind"].items()]
  return lines


def _epoch_section(e: dict | None) -> list[str]:
  if not e:
    return []
  if "error" in e:
    return ["", "## Epoch", "", f"failed: {e['error'][:500]}"]
  return [
      "", "## One epoch end to end vs the sum of its train steps", "",
      f"Book CNN (conv_impl={e['conv_impl']}) on {e['dataset']}, "
      f"{e['num_train']} images, batch {e['batch_size']}, "
      f"{e['steps_per_dispatch']} steps per dispatch, through `experiment.run` "
      "with classify's config, as `experiments/classify.py` runs it (compiled "
      f"step reused from the compilation cache: {e['loop_reused_compiled_step']}).", "",
      "| steps | dispatches | step ms | sum of steps s | epoch s (runs) | "
      "overhead | one-time s | per-epoch overhead | checkpoint s | "
      "per-epoch overhead without checkpoint |",
      "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
      f"| {e['steps_per_epoch']} | {e['dispatches_per_epoch']} | "
      f"{e['step_seconds_median'] * 1e3:.1f} | "
      f"{e['sum_of_train_steps_seconds']:.2f} | {e['epoch_seconds']:.2f} "
      f"({', '.join(f'{x:.2f}' for x in e['epoch_seconds_runs'])}) | "
      f"{100 * e['overhead_fraction']:+.1f}% | {e['one_time_seconds']:.2f} | "
      f"{100 * e['overhead_fraction_per_epoch']:+.1f}% | "
      f"{e['checkpoint_save_seconds']:.2f} | "
      f"{100 * e['overhead_fraction_per_epoch_without_checkpoint']:+.1f}% |",
      "", "Overhead = epoch / sum of steps - 1, with the epoch time the loop's "
      "own `train_seconds` (median of the runs). One-time: what the loop's "
      "first dispatch pays once per run even with the executable cached "
      f"(tracing and lowering the step: {e['trace_lower_and_load_seconds']:.2f} s; "
      f"the first call's set-up: {e['first_call_extra_seconds']:.2f} s); "
      "per-epoch overhead removes it. What remains is the per-dispatch host "
      "work (indices out, metrics back, logging), the epoch's checkpoint, "
      "and noise from other jobs on the machine."]


def markdown(result: dict) -> str:
  """The step benchmark's tables."""
  lines = [f"# Train-step benchmark: {result['tag']}", "", f"`{result['command']}`", ""]
  lines += provenance_lines(result)
  lines += ["- other jobs may share this machine: each timed window is paired with a "
            "matmul window right after it, and the fraction is the median of the "
            "paired ratios", ""]
  lines += ["## Matmul reference (same process)", "",
            "| size | dtype | median GFLOP/s | min | max |", "|---:|---|---:|---:|---:|"]
  for r in result["matmul"]:
    lines.append(f"| {r['size']} | {r['dtype']} | {r['median_flops_per_s'] / 1e9:.1f} | "
                 f"{r['min_flops_per_s'] / 1e9:.1f} | {r['max_flops_per_s'] / 1e9:.1f} |")
  lines += [""] + _cases_table(result)
  lines += _scaling_section(result.get("scaling") or {})
  lines += _profile_sections(result.get("profiles", []))
  lines += _epoch_section(result.get("epoch"))
  lines += ["", "## Notes", ""] + [f"- {n}" for n in result.get("notes", [])]
  return "\n".join(lines) + "\n"


def convergence_markdown(result: dict) -> str:
  """The flows' time to the target KL, and their validation KL curves."""
  target = result["target_kl"]
  lines = [f"# Density flows: time to a held-out KL of {target} nats", "",
           f"`{result['command']}`", ""]
  lines += provenance_lines(result)
  lines += ["- default `genmodels/density/config.py`, trained by `density.make_task` "
            "and `experiment.train` as `experiments/density_mle.py` trains it, "
            f"{result.get('num_train', 100_000):,} training points, seed "
            f"{result.get('seed', 0)}; KL = "
            "held-out NLL - true entropy, on the validation points for the curve and "
            "the test points at the end; seconds exclude the evaluations "
            "(compilation included)", "",
            "| model | params | batch | steps | steps/s (all) | steps/s (steady) | "
            f"step at KL <= {target} | seconds to it | final test KL | "
            "land precision |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in result["rows"]:
    lines.append(
        f"| {r['model']} | {r['num_params']:,} | {r['batch_size']} | {r['num_steps']} | "
        f"{r['steps_per_second']:.1f} | {fmt(r['steady_steps_per_second'], '.1f')} | "
        f"{fmt(r['step_to_target'], 'd', 'not reached')} | "
        f"{fmt(r['seconds_to_target'], '.1f', 'not reached')} | "
        f"{r['final_test_kl']:.4f} | {r['final_land_precision']:.3f} |")
  if result["rows"]:
    longest = max((r["curve"] for r in result["rows"]), key=len)
    lines += ["", "Validation KL along the way:", "",
              "| model | " + " | ".join(f"step {c['step']}" for c in longest) + " |",
              "|---|" + "---:|" * len(longest)]
    for r in result["rows"]:
      lines.append(f"| {r['model']} | " + " | ".join(
          f"{c['validation_kl']:.3f} ({c['train_seconds']:.0f} s)" for c in r["curve"])
                   + " |")
  return "\n".join(lines) + "\n"


def _replace(path: str, text: str) -> None:
  """Writes ``text`` to a new temporary file beside ``path``, then renames it over
  ``path``: a reader, a kill or a full disk never leaves half a file there."""
  folder, name = os.path.split(path)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide committed results
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write(out_dir: str, tag: str, result: dict, text: str) -> str:
  """``out_dir/tag.json`` and ``out_dir/tag.md``, each replaced atomically; the json's path.

  Both are serialised before either is touched, so a result that cannot be
  written as JSON leaves the old files as they were.
  """
  data = json.dumps(metrics_lib.to_python(result), indent=2)
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, f"{tag}.json")
  _replace(os.path.join(out_dir, f"{tag}.md"), text)
  _replace(path, data)
  return path
