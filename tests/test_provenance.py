"""The run record: CPU steal from /proc/stat, machine and versions."""

import json

import pytest

from genmodels.training import provenance


def _stat(path, user, idle, steal):
  # cpu user nice system idle iowait irq softirq steal guest guest_nice
  path.write_text(f"cpu  {user} 0 10 {idle} 0 0 0 {steal} 7 0\ncpu0 1 2 3 4\n")


def test_steal_fraction_is_stolen_share_of_all_cpu_time(tmp_path):
  stat = tmp_path / "stat"
  _stat(stat, user=100, idle=400, steal=50)
  meter = provenance.StealMeter(str(stat))
  _stat(stat, user=160, idle=430, steal=80)  # +60 user, +30 idle, +30 steal
  # guest time (7) is part of user already and is not added again
  assert meter.fraction() == pytest.approx(30 / (60 + 30 + 30))


def test_steal_unknown_without_proc_stat(tmp_path):
  assert provenance.StealMeter(str(tmp_path / "missing")).fraction() is None


def test_run_record_names_machine_versions_and_steal():
  record = json.loads(json.dumps(provenance.run_record(provenance.StealMeter())))
  assert record["machine"]["cpu_cores"] >= 1 and record["machine"]["cpu_model"]
  assert record["versions"]["jax"] and record["versions"]["flax"]
  assert "cpu_steal_fraction" in record
  assert "jax " + record["versions"]["jax"] in provenance.describe(record)
