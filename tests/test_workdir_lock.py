"""One workdir, one run: a second start is refused while the first lives.

Real processes: a density run holds its workdir; the same command started again
(a double-typed command, a scheduler's retry) exits with status 2 and one line
naming the live process, and changes nothing in the workdir. Once the first
is killed with SIGKILL, its lock no longer blocks anyone.
"""

import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest

from genmodels import locking
from genmodels import workdir as workdir_lib
from genmodels.errors import UsageError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _command(workdir):
  return [sys.executable, os.path.join(REPO, "experiments", "density_mle.py"),
          f"--workdir={workdir}", "--model=gmm", "--progress=false", "--figures=false",
          "--config=genmodels/density/config.py:smoke",
          "--config.models.gmm.train.num_steps=1000000"]  # runs until killed


def _snapshot(folder):
  """Every file's path, size and SHA-256 (the run is stopped while we look)."""
  out = {}
  for root, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
  return out


def _wait_for(predicate, proc, what, timeout=180):
  deadline = time.monotonic() + timeout
  while not predicate():
    assert proc.poll() is None, f"the run ended before {what}"
    assert time.monotonic() < deadline, f"timed out waiting for {what}"
    time.sleep(0.05)


def _holder_pid(workdir):
  return locking.read_holder(os.path.join(workdir, workdir_lib.LOCK_FILE)).get("pid")


@pytest.mark.slow  # three real runs: the slow tier, run by .ci/run
def test_second_run_into_a_live_workdir_is_refused_and_changes_nothing(tmp_path):
  workdir = tmp_path / "run"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  first = subprocess.Popen(_command(workdir), cwd=REPO, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    ckpt = workdir / "models" / "gmm" / "checkpoints"
    _wait_for(lambda: _holder_pid(workdir) == first.pid and ckpt.is_dir()
              and any(n.isdigit() for n in os.listdir(ckpt)), first,
              "the first run's first checkpoint")
    os.kill(first.pid, signal.SIGSTOP)  # frozen: its files hold still
    before = _snapshot(workdir)
    second = subprocess.run(_command(workdir), cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=180)
    after = _snapshot(workdir)
    os.kill(first.pid, signal.SIGCONT)
    assert second.returncode == 2, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    assert "is in use by a live run" in lines[0] and f"pid {first.pid}" in lines[0]
    assert "Traceback" not in second.stderr
    assert after == before

    os.kill(first.pid, signal.SIGKILL)  # a crash: the lock file stays behind
    first.wait(timeout=60)
    assert _holder_pid(workdir) == first.pid
    third = subprocess.Popen(_command(workdir), cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    try:
      _wait_for(lambda: _holder_pid(workdir) == third.pid, third,
                "the next run to take the dead run's lock")
    finally:
      third.kill()
      third.communicate(timeout=60)
  finally:
    if first.poll() is None:
      os.kill(first.pid, signal.SIGCONT)
      first.kill()
      first.wait()


def test_lock_is_exclusive_between_holders_and_free_after_release(tmp_path):
  path = str(tmp_path / "lock")
  a = locking.FileLock(path).acquire(blocking=False)
  with pytest.raises(locking.LockedError) as info:
    locking.FileLock(path).acquire(blocking=False)
  assert info.value.holder["pid"] == os.getpid()
  a.release()
  assert locking.read_holder(path) == {}  # an empty record once let go
  b = locking.FileLock(path).acquire(blocking=False)
  b.release()


def test_workdir_that_is_a_file_is_named_as_such(tmp_path):
  path = tmp_path / "results.txt"
  path.write_text("not a folder")
  with pytest.raises(UsageError, match="is a file, not a folder"):
    workdir_lib.prepare_workdir(str(path), {"a": 1})
  assert path.read_text() == "not a folder"
