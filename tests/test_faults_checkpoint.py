"""Faults a hostile user found in checkpoints, metrics, the workdir lock and I/O.

Each test reproduces one reported fault with real files: a finished smoke run
of the mixture of Gaussians (through the shared loop) is copied and damaged the
way the report did, then trained again; the run must end bitwise where the
undamaged run ends, saying what it skipped in one warning line. The lock tests
use real processes; the disk tests a private tmpfs (full, then read-only).
"""

import errno
import gc
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from genmodels import cli
from genmodels import density
from genmodels import locking
from genmodels.density import config as density_config
from genmodels.training import checkpoint as checkpoint_lib
from genmodels.training import experiment
from genmodels.training import metrics as metrics_lib

# Real processes and damaged files (a minute or more of CPU): outside the
# default suite, run by .ci/run with -m slow.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 40  # the smoke unit: a checkpoint every 20 steps, a record every 10


@pytest.fixture(scope="module")
def gmm():
  config = density_config.smoke()
  config.model = "gmm"
  options = experiment.Options(progress=False, figures=False)
  data = density.load_data(config)
  task = next(t for t in density.tasks(config, data, options) if t.name == "gmm")
  assert task.config.train.num_steps == STEPS
  assert task.config.train.checkpoint_every == 20
  return config, task, options


def _train(gmm, workdir, task=None, on_eval=None):
  config, default_task, options = gmm
  return experiment.train(task or default_task, str(workdir), config.seed, options,
                          on_eval=on_eval)


@pytest.fixture(scope="module")
def finished(gmm, tmp_path_factory):
  """The undamaged run: (workdir, result)."""
  workdir = tmp_path_factory.mktemp("gmm") / "run"
  return workdir, _train(gmm, workdir)


def _copy(finished, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(finished[0], workdir)
  return workdir, workdir / "checkpoints"


def _without_timing(rows):
  return [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]


def _assert_same_state(a, b):
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b):
    x, y = np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(
        x.dtype, jax.dtypes.prng_key) else x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


def _checkpoint_warnings(caplog):
  return [r.getMessage() for r in caplog.records
          if r.levelno == logging.WARNING and "checkpoint" in r.getMessage()]


def _assert_ends_like(result, ref, resumed_from):
  assert result.resumed_from == resumed_from
  _assert_same_state(result.state.params, ref.state.params)
  _assert_same_state(result.state.opt_state, ref.state.opt_state)
  assert _without_timing(result.history) == _without_timing(ref.history)


# ------------------------------------------- 1. an incomplete newest checkpoint

def _rm_default(ckpt):
  shutil.rmtree(ckpt / "40" / "default")


def _empty_step_999(ckpt):
  (ckpt / "999").mkdir()


@pytest.mark.parametrize("damage,bad,good", [(_rm_default, 40, 20),
                                             (_empty_step_999, 999, 40)],
                         ids=["no_default_folder", "empty_step_folder"])
def test_incomplete_newest_checkpoint_falls_back_to_the_newest_good_one(
    gmm, finished, tmp_path, caplog, damage, bad, good):
  """Orbax fixed its item mode from the first step it read: every step 'unreadable'."""
  workdir, ckpt = _copy(finished, tmp_path)
  damage(ckpt)
  with caplog.at_level(logging.WARNING):
    result = _train(gmm, workdir)
  warnings = _checkpoint_warnings(caplog)
  assert len(warnings) == 1, warnings
  assert f"checkpoint at step {bad} " in warnings[0]
  assert f"falling back to step {good}, the newest good one" in warnings[0]
  assert "Composite" not in warnings[0]
  _assert_ends_like(result, finished[1], resumed_from=good)
  # The bad step is moved aside: the next start finds only good ones.
  assert (ckpt / f"{bad}.corrupt").is_dir()
  assert checkpoint_lib.Checkpointer(str(ckpt), 20).steps() == [20, 40]


# ------------------------------------- 5. the metadata is part of what is checked

def _emptied_metadata_and_swapped_arrays(ckpt):
  (ckpt / "40" / checkpoint_lib.METADATA_FILE).write_bytes(b"")
  shutil.rmtree(ckpt / "40" / "default")
  shutil.copytree(ckpt / "20" / "default", ckpt / "40" / "default")


def _whole_step_copied_over(ckpt):
  shutil.rmtree(ckpt / "40")
  shutil.copytree(ckpt / "20", ckpt / "40")  # its metadata matches its arrays


@pytest.mark.parametrize("damage,why", [
    (_emptied_metadata_and_swapped_arrays, "_CHECKPOINT_METADATA is empty"),
    (_whole_step_copied_over, "_CHECKPOINT_METADATA is that of step 20")],
                         ids=["emptied_metadata", "metadata_of_another_step"])
def test_untrusted_metadata_is_not_a_checkpoint(gmm, finished, tmp_path, caplog,
                                                damage, why):
  """An emptied _CHECKPOINT_METADATA turned the SHA-256 check off: step 20's
  arrays restored silently as step 40's (another test NLL, exit 0)."""
  workdir, ckpt = _copy(finished, tmp_path)
  damage(ckpt)
  with caplog.at_level(logging.WARNING):
    result = _train(gmm, workdir)
  warnings = _checkpoint_warnings(caplog)
  assert len(warnings) == 1 and why in warnings[0], warnings
  assert "falling back to step 20" in warnings[0]
  _assert_ends_like(result, finished[1], resumed_from=20)


# ------------------------------------------ 9. every checkpoint corrupt, I/O faults

def test_all_checkpoints_corrupt_trains_from_scratch_with_one_warning(
    gmm, finished, tmp_path, caplog, capfd):
  """Orbax's failed reads left asyncio tasks behind ('Event loop is closed')."""
  workdir, ckpt = _copy(finished, tmp_path)
  for root, _, files in os.walk(ckpt):
    if os.path.basename(root) == "d":  # array data: Orbax's reads fail
      for name in files:
        os.truncate(os.path.join(root, name), 10)
  with caplog.at_level(logging.WARNING):
    result = _train(gmm, workdir)
  gc.collect()  # what a failed read left behind would log now
  warnings = _checkpoint_warnings(caplog)
  assert len(warnings) == 1, warnings
  assert "checkpoints at steps 40, 20 " in warnings[0]
  assert "training from scratch" in warnings[0]
  _assert_ends_like(result, finished[1], resumed_from=0)
  err = capfd.readouterr().err
  assert "Traceback" not in err and "Event loop is closed" not in err, err


def test_workdir_deleted_mid_run_is_one_error_line(gmm, tmp_path, capfd):
  """Orbax re-created the deleted workdir and the run 'finished' with exit 0."""
  _, task, _ = gmm
  cfg = task.config.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.train.eval_every = 20
  workdir = tmp_path / "run"

  def delete_at_20(step, results, seconds):
    del results, seconds
    if step == 20:
      shutil.rmtree(workdir)

  main = cli.one_line_errors(lambda argv: _train(
      gmm, workdir, task=experiment.Task(**{**vars(task), "config": cfg}),
      on_eval=delete_at_20))
  with pytest.raises(SystemExit) as info:
    main([])
  gc.collect()
  assert info.value.code == 2
  lines = capfd.readouterr().err.strip().splitlines()
  assert len(lines) == 1, lines
  assert lines[0].startswith("error: the machine refused the run's files: the "
                             "checkpoint folder was deleted during the run"), lines
  assert not workdir.exists()  # not re-created behind the user's back


_DISK_SCRIPT = textwrap.dedent("""
    import json, os, subprocess, sys
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax, jax.numpy as jnp, numpy as np, optax
    from flax import linen as nn
    from genmodels import cli
    from genmodels.training import checkpoint, loop

    class MLP(nn.Module):
      @nn.compact
      def __call__(self, x):
        return nn.Dense(1)(nn.tanh(nn.Dense(16)(x)))[:, 0]

    model = MLP()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 8)).astype(np.float32)
    data = {"x": x, "y": np.sin(x.sum(1)).astype(np.float32)}

    def loss(variables, batch, key, train):
      mse = jnp.mean((model.apply(variables, batch["x"]) - batch["y"]) ** 2)
      return mse, ({"mse": mse}, {})

    def train(workdir, fault=None):
      def on_eval(step, results, seconds):
        if step == 20 and fault:
          fault(workdir)
      config = loop.LoopConfig(num_steps=30, batch_size=16, log_every=10,
                               checkpoint_every=10, eval_every=20, progress=False)
      return loop.train(
          init_fn=lambda k: model.init(k, jnp.zeros((1, 8))), loss_fn=loss,
          tx=optax.adam(1e-2), train_data=data, config=config, workdir=workdir,
          eval_fn=lambda v, b: {"se": (model.apply(v, b["x"]) - b["y"]) ** 2},
          eval_data={"test": data}, on_eval=on_eval)

    def read_only(workdir):
      for args in (["--bind", workdir, workdir], ["-o", "remount,bind,ro", workdir]):
        subprocess.run(["mount", *args], check=True)

    def full(workdir):
      subprocess.run(["dd", "if=/dev/zero", f"of={sys.argv[1]}/filler", "bs=64k"],
                     stderr=subprocess.DEVNULL)

    out = {"ref": checkpoint.state_digest(train(sys.argv[1] + "/ref").state)}
    for name, fault in (("read_only", read_only), ("full", full)):
      workdir = f"{sys.argv[1]}/{name}"
      try:
        cli.one_line_errors(lambda argv: train(workdir, fault))([])
        out[name + "_status"] = 0
      except SystemExit as e:
        out[name + "_status"] = e.code
      if name == "read_only":
        subprocess.run(["umount", workdir], check=True)
      else:
        os.remove(f"{sys.argv[1]}/filler")
      result = train(workdir)  # the same command again, once the disk is fixed
      out[name] = [result.resumed_from, checkpoint.state_digest(result.state)]
    full(None)  # exit on a full disk: nothing may be left to flush then
    print(json.dumps(out))
    """)


def _can_mount():
  try:
    return subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs none /mnt"],
                          capture_output=True, timeout=30).returncode == 0
  except (OSError, subprocess.TimeoutExpired):
    return False


@pytest.mark.skipif(not _can_mount(), reason="needs unshare -m and mount (root)")
def test_read_only_and_full_disk_mid_run_are_one_error_line_each_then_resume(tmp_path):
  """Each was tracebacks from Orbax's and tensorboardX's threads and exit hooks."""
  script = tmp_path / "disk.py"
  script.write_text(_DISK_SCRIPT)
  mnt = tmp_path / "mnt"
  mnt.mkdir()
  proc = subprocess.run(
      ["unshare", "-m", "sh", "-c",
       f"mount -t tmpfs -o size=8m tmpfs {mnt} && exec {sys.executable} {script} {mnt}"],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO))
  assert proc.returncode == 0, proc.stderr
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["read_only_status"] == 2 and out["full_status"] == 2, proc.stderr
  lines = [line for line in proc.stderr.strip().splitlines()
           if line != "resumed from step 10"]  # the runs after the fix
  assert len(lines) == 2, proc.stderr
  assert all(line.startswith("error: the machine refused the run's files: ")
             for line in lines), lines
  assert os.strerror(errno.EROFS) in lines[0]
  assert os.strerror(errno.ENOSPC) in lines[1]
  # Once fixed, each resumes from its last checkpoint to the undamaged end.
  assert out["read_only"] == [10, out["ref"]]
  assert out["full"] == [10, out["ref"]]


# --------------------------------------------------------- 10. a bad metrics line

def test_bad_metrics_line_is_skipped_and_the_records_after_it_kept(
    gmm, finished, tmp_path, caplog):
  """One '{garbage' line dropped every record after it, for good (22 -> 5)."""
  workdir, _ = _copy(finished, tmp_path)
  path = workdir / "metrics.jsonl"
  good = path.read_text()
  lines = good.splitlines(keepends=True)
  assert len(lines) > 4
  path.write_text("".join(lines[:2] + ["{garbage\n", "[]\n", '{"a": 1}\n'] + lines[2:]))
  with caplog.at_level(logging.WARNING):
    assert metrics_lib.read_metrics(str(path)) == [json.loads(l) for l in lines]
  warnings = [r.getMessage() for r in caplog.records if "metrics.jsonl" in r.getMessage()]
  assert len(warnings) == 1 and "skipped 3 line(s)" in warnings[0], warnings
  assert "line 3: '{garbage'" in warnings[0]

  result = _train(gmm, workdir)  # the re-run resumes at the end
  assert result.resumed_from == STEPS
  assert path.read_text() == good  # every record kept, the bad lines gone
  assert _without_timing(result.history) == _without_timing(finished[1].history)


def test_torn_last_metrics_line_is_skipped_quietly(tmp_path, caplog):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 10, "split": "train", "loss": 1.0}\n{"step": 20, "spl')
  with caplog.at_level(logging.WARNING):
    assert metrics_lib.read_metrics(str(path)) == [
        {"step": 10, "split": "train", "loss": 1.0}]
  assert not caplog.records


# ------------------------------------------------ 6. a lock whose file was deleted

def _inode(path):
  st = os.stat(path)
  return st.st_dev, st.st_ino


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_lock_file_deleted_or_replaced_under_its_holder_still_refuses(tmp_path, how):
  """The newcomer locks at once, before the holder notices: it must still lose."""
  path = str(tmp_path / ".lock")
  a = locking.FileLock(path).acquire(blocking=False)
  try:
    if how == "deleted":
      os.remove(path)
    else:  # an editor's save, a restore from a backup
      with open(path + ".new", "w") as f:
        f.write("{}")
      os.replace(path + ".new", path)
    with pytest.raises(locking.LockedError) as info:
      locking.FileLock(path).acquire(blocking=False)
    assert info.value.holder["pid"] == os.getpid()
    assert not info.value.holder.get("pending")
    assert _inode(path) == (os.fstat(a._fd).st_dev, os.fstat(a._fd).st_ino)  # pylint: disable=protected-access
  finally:
    a.release()
  b = locking.FileLock(path).acquire(blocking=False)  # free once let go
  b.release()


_HOLD = ("import sys; from genmodels import workdir; workdir.lock_workdir(sys.argv[1]); "
         "print('locked', flush=True); sys.stdin.read()")
_TRY = ("import sys; from genmodels import workdir; workdir.lock_workdir(sys.argv[1]); "
        "print('admitted', flush=True)")


def test_second_run_refused_after_the_lock_file_is_deleted(tmp_path):
  """rm WD/.lock under a live run admitted a second run into its workdir."""
  workdir = tmp_path / "run"
  workdir.mkdir()
  env = dict(os.environ, PYTHONPATH=REPO)
  first = subprocess.Popen([sys.executable, "-c", _HOLD, str(workdir)], cwd=REPO, env=env,
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  try:
    assert first.stdout.readline().strip() == "locked"
    os.remove(workdir / ".lock")
    second = subprocess.run([sys.executable, "-c", _TRY, str(workdir)], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=120)
    assert "admitted" not in second.stdout
    assert second.returncode != 0
    assert f"is in use by a live run: pid {first.pid}" in second.stderr, second.stderr
  finally:
    first.stdin.close()
    first.wait(timeout=60)
  third = subprocess.run([sys.executable, "-c", _TRY, str(workdir)], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=120)
  assert third.stdout.strip() == "admitted", third.stderr
