"""Data parallelism: 8 simulated CPU devices give a 1-device run's results.

XLA_FLAGS must be set before JAX starts, so the runs happen in subprocesses:
this file run as a script (``python tests/test_sharding.py WORKDIR N``) trains
a Gaussian mixture and the book's CNN (BatchNorm and dropout included) with the
shared loop on N of 8 simulated devices and prints a JSON summary; the test
compares N=1 with N=8.

Tolerance: the runs differ only by the order of floating-point sums (the
gradient and BatchNorm all-reduces add 8 partial sums instead of one), so
after 12 steps parameters agree to ATOL = 1e-4 and metrics to RTOL = 1e-4
(observed: ~1e-6). The classifier uses SGD, not Adam: see ``_train``.
"""

import atexit
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest

ATOL = 1e-4  # parameters, after 12 steps
RTOL = 1e-4  # logged losses and eval metrics
NUM_DEVICES = 8
CONV_IMPL = "xla"  # the default; im2col is checked against it in test_classifiers_impl


@functools.lru_cache
def _problem(kind: str):
  """(init_fn, loss_fn, eval_fn, tx, train_data, eval_data) for a run."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp
  import optax
  from genmodels import models
  from genmodels.networks import classifiers
  from genmodels import density
  from genmodels.classify import task as classify_task

  rng = np.random.default_rng(0)
  if kind == "density":
    x = np.stack([rng.uniform(-170, 170, 2048), rng.uniform(-50, 70, 2048)],
                 -1).astype(np.float32)
    model = models.get_density_model("gmm", num_components=8)
    init_fn = jax.jit(lambda k: model.init(k, jnp.asarray(x), method="log_prob"))
    loss_fn, eval_fn = density.density_loss(model), density.density_eval(model)
    train_data, eval_data = {"x": x}, {"val": {"x": x[:500]}}
    tx = optax.adam(1e-3)
  else:
    images = rng.integers(0, 256, (512, 8, 8, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, 512).astype(np.int32)
    model = classifiers.get_classifier("cnn", num_classes=10, conv_impl=CONV_IMPL)
    init_fn = jax.jit(lambda k: model.init({"params": k, "dropout": k},
                                           jnp.zeros((1, 8, 8, 1)), train=False))
    loss_fn = classify_task.classification_loss(model)
    eval_fn = None
    train_data = {"image": images, "label": labels}
    eval_data = None  # the density run covers sharded evaluation; saves compiles
    # Not Adam: the conv and dense biases feed BatchNorm, so their gradient is
    # exactly zero in exact arithmetic and pure rounding noise in floats, which
    # Adam's normalisation turns into steps of size lr in random directions
    # (the 1- and 8-device runs then differ by ~lr * steps in those biases).
    tx = optax.sgd(0.05, momentum=0.9)
  # Initialised once for both runs (the initialisers take seconds to compile);
  # each run gets host copies, so donating its state cannot delete them.
  variables = jax.device_get(init_fn(jax.random.key(0)))
  init_fn = lambda key: jax.tree.map(np.array, variables)
  return init_fn, loss_fn, eval_fn, tx, train_data, eval_data


def _train(kind: str, num_devices: int, workdir: str) -> dict:
  """One short run of the shared loop; returns params, history and trace count."""
  import jax  # pylint: disable=g-import-not-at-top
  from genmodels.training import loop  # pylint: disable=g-import-not-at-top
  init_fn, loss_fn, eval_fn, tx, train_data, eval_data = _problem(kind)
  traces = []

  def counted_loss(*args):
    traces.append(1)  # runs once per trace, never per executed step
    return loss_fn(*args)

  config = loop.LoopConfig(num_steps=12, batch_size=64, log_every=4,
                           eval_batch_size=128, checkpoint_every=0,
                           steps_per_dispatch=4, progress=False,
                           num_devices=num_devices)
  result = loop.train(init_fn=init_fn, loss_fn=counted_loss, tx=tx,
                      train_data=train_data, config=config, workdir=workdir,
                      eval_fn=eval_fn, eval_data=eval_data)
  leaves = jax.tree_util.tree_leaves_with_path(result.state.variables)
  return {"variables": {jax.tree_util.keystr(p): np.asarray(v).tolist()
                        for p, v in leaves},
          "history": result.history, "traces": len(traces),
          "mesh_size": len(jax.devices()) if num_devices is None else num_devices}


def _worker(workdir: str, num_devices: int):
  import jax  # pylint: disable=g-import-not-at-top
  assert len(jax.devices()) == NUM_DEVICES, jax.devices()
  out = {}
  for kind in ("density", "classifier"):
    out[f"{kind}_{num_devices}"] = _train(
        kind, num_devices, os.path.join(workdir, f"{kind}_{num_devices}"))
  if num_devices == 1:
    print(json.dumps(out))
    return
  # Too few examples for the devices: a one-line error, not a crash.
  from genmodels.training import loop  # pylint: disable=g-import-not-at-top
  try:
    loop.train(init_fn=lambda k: {"params": {}}, loss_fn=None, tx=None,
               train_data={"x": np.zeros((64, 2), np.float32)}, workdir=workdir,
               config=loop.LoopConfig(num_steps=1, batch_size=12, progress=False))
  except ValueError as e:
    out["indivisible_error"] = str(e)
  print(json.dumps(out))


_RUNS: dict = {}


def _launch():
  """The 1-device and the 8-device runs, as two concurrent subprocesses
  (compiling is mostly single-threaded: two overlap well on two cores)."""
  if not _RUNS:
    workdir = tempfile.mkdtemp(prefix="test_sharding_")
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=(
        f"--xla_force_host_platform_device_count={NUM_DEVICES}"))
    _RUNS["workdir"] = workdir
    _RUNS["procs"] = [subprocess.Popen(
        [sys.executable, __file__, workdir, str(n)], env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE) for n in (1, NUM_DEVICES)]
    atexit.register(_stop)
  return _RUNS


def _stop():
  for p in _RUNS.get("procs", []):
    if p.poll() is None:
      p.kill()
      p.wait()
  shutil.rmtree(_RUNS.get("workdir", ""), ignore_errors=True)


def start_early(items):
  """Called by conftest.py after collection: overlap the runs with other files."""
  if any("runs" in item.fixturenames for item in items):
    _launch()


@pytest.fixture(scope="module")
def runs():
  out = {}
  for proc in _launch()["procs"]:
    try:
      stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
      _stop()
      pytest.fail("the sharding subprocesses did not finish in 300 s")
    assert proc.returncode == 0, stderr[-3000:]
    out.update(json.loads(stdout.strip().splitlines()[-1]))
  yield out
  _stop()


def _assert_same_run(a: dict, b: dict):
  assert a["variables"].keys() == b["variables"].keys()
  for k in a["variables"]:
    np.testing.assert_allclose(a["variables"][k], b["variables"][k], atol=ATOL,
                               err_msg=k)
  assert [(r["step"], r["split"]) for r in a["history"]] == [
      (r["step"], r["split"]) for r in b["history"]]
  for ra, rb in zip(a["history"], b["history"]):
    for k, v in ra.items():
      if k not in ("step", "split") and "seconds" not in k:  # not timings
        np.testing.assert_allclose(v, rb[k], rtol=RTOL, err_msg=f"{ra['split']} {k}")


@pytest.mark.parametrize("kind", ["density", "classifier"])
def test_eight_devices_match_one(runs, kind):
  one, eight = runs[f"{kind}_1"], runs[f"{kind}_{NUM_DEVICES}"]
  assert eight["mesh_size"] == NUM_DEVICES
  _assert_same_run(one, eight)
  # Training moved the parameters (the comparison is not of two fresh inits).
  assert eight["history"][0]["loss"] != eight["history"][-2]["loss"]


def test_no_recompilation_across_steps_on_the_mesh(runs):
  # 3 dispatches of 4 steps: the loss is traced for one compilation only
  # (value_and_grad inside lax.scan traces it once), not once per dispatch.
  for kind in ("density", "classifier"):
    assert runs[f"{kind}_{NUM_DEVICES}"]["traces"] == runs[f"{kind}_1"]["traces"] == 1


def test_batch_must_split_over_the_devices(runs):
  assert "must be a multiple of the 8 devices" in runs["indivisible_error"]


def test_make_mesh_checks_the_device_count():
  from genmodels.training import sharding  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  n = len(jax.devices())
  assert sharding.make_mesh().size == n
  assert sharding.make_mesh(1).size == 1
  for bad in (0, n + 1):
    with pytest.raises(ValueError, match="num_devices"):
      sharding.make_mesh(bad)


def test_single_process_puts_are_device_put():
  import jax  # pylint: disable=g-import-not-at-top
  from genmodels.training import sharding  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh()
  idx = np.arange(12, dtype=np.int32).reshape(3, 4)
  out = sharding.put_process_slice(idx, sharding.batch_sharded(mesh, 1), axis=1)
  np.testing.assert_array_equal(np.asarray(out), idx)
  tree = sharding.put({"a": idx}, sharding.replicated(mesh))
  assert isinstance(tree["a"], jax.Array)
  np.testing.assert_array_equal(np.asarray(tree["a"]), idx)


if __name__ == "__main__":
  _worker(sys.argv[1], int(sys.argv[2]))
