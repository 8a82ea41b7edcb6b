"""The benchmark times the very step the experiments train, and its reports say where.

For a density model (gmm, smoke config) and a classifier (the smoke config with
the book's MLP), the
benchmark builds its case from the experiment's config with the case's
overrides (``genmodels/bench/cases.py``) and compiles the step of
``experiment.setup``; the experiment trains the same config with its own task
builder through ``experiment.train`` (``loop.train``), as density_mle.py and
classify.py do. One dispatch of each, from the same initial state and on the
same indices, must give bitwise the same state and metrics.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from genmodels.bench import cases
from genmodels.bench import harness
from genmodels.bench import machine
from genmodels.bench import report
from genmodels import classify
from genmodels import density
from genmodels.classify import config as classify_config
from genmodels.density import config as density_config
from genmodels.training import experiment
from genmodels.training import provenance

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIONS = experiment.Options(progress=False, figures=False)


def _assert_same_step(step, metrics, result, k):
  """The benchmark's state and metrics after one dispatch == the loop's after its run."""
  bench = jax.tree.leaves(jax.device_get(step.state))
  trained = jax.tree.leaves(jax.device_get(result.state))
  assert len(bench) == len(trained)
  for a, b in zip(bench, trained):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # bitwise, not close
  assert int(jax.device_get(step.state.step)) == k
  metrics = jax.device_get(metrics)
  assert np.all(metrics["finite"])
  # loop.train logs the window's mean of each metric, computed this way.
  logged = result.last("train")
  for key, values in metrics.items():
    if key != "finite":
      assert logged[key] == float(np.mean([values[i] for i in range(k)])), key


def _one_dispatch(train_cfg, k):
  train_cfg.update(steps_per_dispatch=k, log_every=k, checkpoint_every=k, eval_every=0)


def test_density_benchmark_step_is_the_step_density_mle_trains(tmp_path):
  k = 10
  config = density_config.get_config("smoke")
  unit = config.models.gmm
  unit.train.num_steps = k
  _one_dispatch(unit.train, k)
  data = density.load_data(config)
  case = cases.Case("gmm", None, int(unit.train.batch_size), "float32", k)
  # The case's overrides leave the experiment's own config as it is.
  assert cases.unit_config(case, config).to_dict() == unit.to_dict()

  step = harness.build_step(case, config=config, data=data)
  assert step.jitted is step.setup.multi_step  # the loop's jitted step, not a copy
  metrics = step.run(1)

  task = density.make_task("gmm", unit, data, config.seed, OPTIONS)
  result = experiment.train(task, str(tmp_path), config.seed, OPTIONS)
  _assert_same_step(step, metrics, result, k)


def test_classify_benchmark_step_is_the_step_classify_trains(tmp_path):
  k = 4
  config = classify_config.get_config("smoke")
  config.num_train = config.num_test = k * config.train.batch_size
  config.train.epochs = 1  # one epoch of k steps: one dispatch
  _one_dispatch(config.train, k)
  config.train.unit = "step"
  config.model = "mlp"  # the CNN's step is the same code path, but compiles for ~45 s
  classify.resolve(config)
  data = cases.synthetic_images(config.num_train, (28, 28, 1))
  case = cases.Case("mlp", (28, 28, 1), int(config.train.batch_size), "float32", k)
  assert cases.unit_config(case, config).to_dict() == config.to_dict()

  step = harness.build_step(case, config=config, data=data)
  assert step.jitted is step.setup.multi_step
  metrics = step.run(1)

  task = classify.make_task(config, data, OPTIONS)
  result = experiment.train(task, str(tmp_path), config.seed, OPTIONS)
  _assert_same_step(step, metrics, result, k)


def test_case_overrides_reach_the_experiment_configs():
  unit = cases.unit_config(cases.Case("spline_flow", None, 2048, "float32", 5))
  default = density_config.get_config().models.spline_flow
  assert unit.train.batch_size == 2048 and unit.train.steps_per_dispatch == 5
  assert unit.model.to_dict() == default.model.to_dict()
  assert unit.optimizer.to_dict() == default.optimizer.to_dict()
  cnn = cases.unit_config(cases.Case("cnn", (32, 32, 3), 128, "bfloat16", 0))
  assert (cnn.model, cnn.model_kwargs.conv_impl, str(cnn.model_kwargs.dtype)) == (
      "cnn", "xla", "bfloat16")
  assert cnn.train.batch_size == 128 and cnn.train.steps_per_dispatch == 1
  assert cnn.optimizer.to_dict() == classify_config.get_config("cnn").optimizer.to_dict()
  assert cases.unit_config(cases.Case("mlp", (28, 28, 1), 32)).model == "mlp"
  with pytest.raises(NotImplementedError):
    cases.unit_config(cases.Case("realnvp", None, 1024, "bfloat16"))
  with pytest.raises(ValueError, match="unknown model"):
    cases.unit_config(cases.Case("nope", None, 32))


def _result(tmp_path):
  stat = tmp_path / "stat"
  stat.write_text("cpu  100 0 10 400 0 0 0 50 0 0\n")
  steal = provenance.StealMeter(str(stat))
  stat.write_text("cpu  160 0 10 430 0 0 0 80 0 0\n")  # 30 of 120 jiffies stolen
  return {"tag": "t", "command": "python3 experiments/benchmark.py --quick",
          "started": "2026-12-01T00:00:00+00:00", "load_average_at_start": [1.0, 1.0, 1.0],
          "run": machine.run_record(steal)}


def test_reports_carry_machine_versions_and_steal(tmp_path):
  result = {**_result(tmp_path), "matmul": [], "cases": [], "notes": ["n"]}
  path = report.write(str(tmp_path / "out"), "t", result, report.markdown(result))
  saved = json.load(open(path))
  m, versions = saved["run"]["machine"], saved["run"]["versions"]
  assert m["cpu_model"] and m["cpu_cores"] >= 1 and m["cpu_cores_usable"] >= 1
  assert versions["jax"] == jax.__version__ and versions["flax"]
  assert saved["run"]["cpu_steal_fraction"] == 0.25
  text = open(tmp_path / "out" / "t.md").read()
  for words in (m["cpu_model"], f"{m['cpu_cores_usable']} usable cores",
                f"jax {jax.__version__}", "CPU steal during the run: **25.0%**"):
    assert words in text

  convergence = {**_result(tmp_path), "target_kl": 0.15, "rows": [{
      "model": "realnvp", "num_params": 10, "batch_size": 8, "num_steps": 2,
      "steps_per_second": 1.0, "steady_steps_per_second": None, "step_to_target": None,
      "seconds_to_target": None, "final_test_kl": 0.4, "final_land_precision": 0.8,
      "curve": [{"step": 2, "train_seconds": 2.0, "validation_kl": 0.5}]}]}
  text = report.convergence_markdown(convergence)
  assert "CPU steal during the run: **25.0%**" in text and m["cpu_model"] in text
  assert "| realnvp | 10 | 8 | 2 |" in text and "not reached" in text


def test_machine_tag_and_nominal_peaks():
  assert machine.machine_tag({"backend": "cpu", "cpu_model": "Intel(R) Xeon(R) Processor",
                              "cpu_cores_usable": 2, "cpu_cores": 4}) == (
                                  "cpu-intel-xeon-processor-2cores")
  assert machine.nominal_peak("NVIDIA H100 PCIe", "bfloat16") == 756e12
  assert machine.nominal_peak("NVIDIA H200", "float32") == pytest.approx(66.9e12)
  assert machine.nominal_peak("cpu", "float32") is None


def test_entry_point_runs_and_refuses_an_unknown_model():
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "experiments", "benchmark.py"), "--models=nope"],
      capture_output=True, text=True, timeout=120, cwd=REPO)
  assert proc.returncode != 0
  assert "unknown model 'nope'" in proc.stderr and "Traceback" not in proc.stderr
