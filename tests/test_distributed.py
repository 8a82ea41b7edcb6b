"""Multi-process training: two processes on localhost agree with one process.

Run as a script (``python tests/test_distributed.py PORT RANK WORKDIR OUT``),
this file is one process of a two-process run (``jax.distributed`` on
127.0.0.1, one CPU device each, gloo collectives): it trains a Gaussian mixture
with the shared loop in the shared WORKDIR and writes its final parameters and
history to OUT. The test compares them with the same run in one process.

Tolerance: the two-process run's mesh has 2 devices, so its gradient is the sum
of two half-batch sums; parameters agree to ATOL = 1e-4 after 12 Adam steps and
metrics to RTOL = 1e-4 (observed: ~1e-7).
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from genmodels.training import distributed

ATOL = 1e-4
RTOL = 1e-4
NUM_STEPS = 12


def _train(workdir: str) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp
  import optax
  from genmodels import models
  from genmodels import density
  from genmodels.training import loop

  rng = np.random.default_rng(0)
  x = np.stack([rng.uniform(-170, 170, 2048), rng.uniform(-50, 70, 2048)],
               -1).astype(np.float32)
  model = models.get_density_model("gmm", num_components=8)
  config = loop.LoopConfig(num_steps=NUM_STEPS, batch_size=64, log_every=4,
                           eval_batch_size=128, checkpoint_every=0,
                           steps_per_dispatch=4, progress=False)
  result = loop.train(
      init_fn=jax.jit(lambda k: model.init(k, jnp.asarray(x), method="log_prob")),
      loss_fn=density.density_loss(model), tx=optax.adam(1e-3),
      train_data={"x": x}, config=config, workdir=workdir,
      eval_fn=density.density_eval(model), eval_data={"val": {"x": x[:500]}})
  return {"params": {jax.tree_util.keystr(p): np.asarray(v).tolist() for p, v in
                     jax.tree_util.tree_leaves_with_path(result.state.params)},
          "history": result.history, "process_count": jax.process_count(),
          "devices": len(jax.devices())}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_initialize_without_arguments_is_a_no_op():
  assert distributed.initialize() is False
  assert distributed.initialize(None, None, None) is False


@pytest.mark.parametrize("kwargs, match", [
    (dict(coordinator_address="127.0.0.1:1234"), "missing: --num_processes, --process_id"),
    (dict(num_processes=2, process_id=0), "missing: --coordinator_address"),
    (dict(coordinator_address="localhost", num_processes=2, process_id=0), "host:port"),
    (dict(coordinator_address="127.0.0.1:1", num_processes=2, process_id=2), r"0\.\.1"),
    (dict(coordinator_address="127.0.0.1:1", num_processes=0, process_id=0), ">= 1"),
])
def test_initialize_rejects_incomplete_or_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    distributed.initialize(**kwargs)


def _two_processes(shared, out_prefix, preempt_rank=None):
  """Runs the two-process training; returns (status codes, logs)."""
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # one CPU device per process
  procs = [subprocess.Popen(
      [sys.executable, __file__, str(port), str(rank), str(shared),
       f"{out_prefix}{rank}.json", str(rank == preempt_rank)], env=env,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for rank in (0, 1)]
  try:
    logs = [p.communicate(timeout=240)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return [p.returncode for p in procs], logs


@pytest.mark.slow  # real processes (a minute on 2 cores): the slow tier, run by .ci/run
def test_two_processes_agree_with_one(tmp_path):
  shared = tmp_path / "shared"
  codes, logs = _two_processes(shared, str(tmp_path / "out"))
  for rank, code in enumerate(codes):
    assert code == 0, f"process {rank}:\n{logs[rank][-3000:]}"
  multi = [json.loads((tmp_path / f"out{rank}.json").read_text()) for rank in (0, 1)]
  single = _train(str(tmp_path / "single"))

  assert [m["process_count"] for m in multi] == [2, 2]
  assert [m["devices"] for m in multi] == [2, 2]
  for m in multi:  # Both processes end with the same state as one process.
    for k, v in single["params"].items():
      np.testing.assert_allclose(m["params"][k], v, atol=ATOL, err_msg=k)
    assert len(m["history"]) == len(single["history"])
    for rm, rs in zip(m["history"], single["history"]):
      assert (rm["step"], rm["split"]) == (rs["step"], rs["split"])
      np.testing.assert_allclose(rm.get("loss", rm.get("nll")),
                                 rs.get("loss", rs.get("nll")), rtol=RTOL)
  # Process 0 alone wrote the metrics; Orbax wrote one set of checkpoints.
  from genmodels.training import metrics  # pylint: disable=g-import-not-at-top
  records = metrics.read_metrics(str(shared / "metrics.jsonl"))
  assert [(r["step"], r["split"]) for r in records] == [
      (r["step"], r["split"]) for r in single["history"]]
  assert sorted(os.listdir(shared / "checkpoints")) == sorted(
      os.listdir(tmp_path / "single" / "checkpoints"))


@pytest.mark.slow  # real processes (a minute on 2 cores): the slow tier, run by .ci/run
def test_a_stop_request_on_one_process_stops_both_at_the_same_step(tmp_path):
  """A SIGTERM that reaches process 1 only: both save one checkpoint and stop."""
  shared = tmp_path / "shared"
  codes, logs = _two_processes(shared, str(tmp_path / "stop"), preempt_rank=1)
  assert codes == [PREEMPTED, PREEMPTED], logs
  stops = [json.loads((tmp_path / f"stop{rank}.json").read_text()) for rank in (0, 1)]
  assert stops[0] == stops[1] == {"preempted_at": 4}  # the first boundary, agreed
  assert sorted(os.listdir(shared / "checkpoints")) == ["4"]
  codes, logs = _two_processes(shared, str(tmp_path / "out"))  # resume
  assert codes == [0, 0], logs
  resumed = [json.loads((tmp_path / f"out{rank}.json").read_text()) for rank in (0, 1)]
  single = _train(str(tmp_path / "single"))
  for m in resumed:
    for k, v in single["params"].items():
      np.testing.assert_allclose(m["params"][k], v, atol=ATOL, err_msg=k)


PREEMPTED = 3

if __name__ == "__main__":
  _port, _rank, _workdir, _out, _preempt = sys.argv[1:]
  distributed.initialize(f"127.0.0.1:{_port}", 2, int(_rank))
  from genmodels.training import preemption  # pylint: disable=g-import-not-at-top
  if _preempt == "True":
    preemption.request()  # as if SIGTERM had reached this process alone
  try:
    _result = _train(_workdir)
  except preemption.Preempted as _e:
    with open(_out, "w") as _f:
      json.dump({"preempted_at": _e.step}, _f)
    sys.exit(PREEMPTED)
  with open(_out, "w") as _f:
    json.dump(_result, _f)
