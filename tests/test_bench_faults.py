"""A bad benchmark flag is one line and exit status 2, and no results file changes.

Every flag is checked before anything runs (``genmodels.bench.cli.request``,
which imports no JAX: each subprocess here takes about a second), and results
replace the old files only after a run that measured something.
"""

import json
import os
import subprocess
import sys

import pytest

from genmodels.bench import report
from genmodels.bench import spec

# Real processes and damaged files (a minute or more of CPU): outside the
# default suite, run by .ci/run with -m slow.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY = os.path.join(REPO, "experiments", "benchmark.py")
OLD = {"t.json": b'{"tag": "t", "cases": ["the committed results"]}\n',
       "t.md": b"# the committed report\n"}


def _results_folder(tmp_path):
  out = tmp_path / "benchmarks"
  out.mkdir()
  for name, data in OLD.items():
    (out / name).write_bytes(data)
  return out


def _snapshot(folder):
  return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _run(*args, cwd=REPO):
  return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                        timeout=120, cwd=cwd)


BAD_FLAGS = [  # (flags, words the error must say)
    (["--density_batch_sizes=0"], ["--density_batch_sizes=0", "'0'", "1024,8192"]),
    (["--density_batch_sizes=abc"], ["--density_batch_sizes=abc", "'abc'"]),
    (["--batch_sizes=32,-1"], ["--batch_sizes", "'-1'"]),
    (["--dtypes=float8"], ["--dtypes=float8", "float32, bfloat16"]),
    (["--steps_per_dispatch=-1"], ["--steps_per_dispatch=-1", ">= 0"]),
    (["--window_seconds=nan"], ["--window_seconds=nan", "finite number > 0"]),
    (["--window_seconds=0"], ["--window_seconds=0", "> 0"]),
    (["--models=bogus"], ["unknown model 'bogus'", "spline_flow"]),
    (["--models="], ["--models= is empty"]),
    (["--image_shapes=32x32"], ["--image_shapes=32x32", "HxWxC"]),
    (["--num_devices=0"], ["--num_devices=0", "device count"]),
    (["--convergence=mlp"], ["--convergence=mlp", "gmm, realnvp, spline_flow"]),
    (["--quick", "--models=mlp"], ["--quick", "--models"]),
    (["--repeats=0"], ["--repeats=0"]),
    (["--tag=../t"], ["--tag", "plain file name"]),
    (["stray"], ["unexpected arguments"]),
]


@pytest.mark.parametrize("args,words", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_a_bad_flag_is_one_line_exit_2_and_changes_no_results(tmp_path, args, words):
  out = _results_folder(tmp_path)
  proc = _run(ENTRY, f"--out={out}", "--tag=t", *args)
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
  assert "Traceback" not in proc.stderr
  for w in words:
    assert w in lines[0]
  assert _snapshot(out) == OLD  # byte for byte, and no new (temporary) file


@pytest.mark.parametrize("out", ["/dev/null", "/dev/null/sub", ""])
def test_an_out_that_is_not_a_writable_folder_is_refused_before_the_run(tmp_path, out):
  proc = _run(ENTRY, f"--out={out}")
  assert proc.returncode == 2, proc.stderr
  assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("error: --out")
  assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("entry", [[ENTRY], ["-m", "genmodels.bench"]],
                         ids=["experiments/benchmark.py", "python -m genmodels.bench"])
def test_help_lists_the_benchmark_flags(tmp_path, entry):
  proc = _run(*entry, "--help", cwd=tmp_path)  # -m: importable as genmodels.bench
  assert "Traceback" not in proc.stderr  # (absl's --help exits with 1)
  for flag in ("models", "out", "density_batch_sizes", "dtypes", "steps_per_dispatch",
               "window_seconds", "convergence", "tag"):
    assert f"  --{flag}:" in proc.stdout, flag
  assert "  --[no]quick:" in proc.stdout
  assert "sys.path" not in proc.stdout


def test_a_run_whose_every_case_failed_replaces_nothing(tmp_path, monkeypatch):
  from genmodels.bench import harness  # pylint: disable=g-import-not-at-top
  from genmodels.bench import runner  # pylint: disable=g-import-not-at-top

  def broken(case, *args, **kwargs):
    raise RuntimeError(f"{case.model} does not compile here")

  monkeypatch.setattr(harness, "measure", broken)
  out = _results_folder(tmp_path)
  req = spec.Request(
      quick=False, cases=(spec.Case("gmm", None, 64), spec.Case("realnvp", None, 64)),
      scaling_models=(), num_devices=(), cpu_scaling_devices=0, out=str(out), tag="t",
      repeats=1, window_seconds=0.01, matmul_size=16, epoch=False,
      epoch_num_train=64, epoch_conv_impl="im2col", profile=False, convergence=(),
      convergence_kl=0.15, convergence_eval_every=1, scaling_worker=None)
  with pytest.raises(runner.NothingMeasured, match="every case failed.*does not compile"):
    runner.run(req)
  assert _snapshot(out) == OLD


def test_report_write_replaces_both_files_or_neither(tmp_path):
  out = _results_folder(tmp_path)
  with pytest.raises(TypeError):  # not JSON: found before either file is touched
    report.write(str(out), "t", {"tag": "t", "bad": object()}, "# new\n")
  assert _snapshot(out) == OLD
  path = report.write(str(out), "t", {"tag": "t", "x": 1.5}, "# new\n")
  assert json.load(open(path)) == {"tag": "t", "x": 1.5}
  assert _snapshot(out)["t.md"] == b"# new\n"
  assert sorted(_snapshot(out)) == ["t.json", "t.md"]  # no temporary file left
  umask = os.umask(0)
  os.umask(umask)
  assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
