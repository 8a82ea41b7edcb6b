"""The `fast` classification recipe: its CNN's building blocks, mirror
augmentation, mirror test-time augmentation, and one end-to-end run."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from genmodels import classify
from genmodels.classify import task as classify_task
from genmodels.training import experiment
from genmodels.networks import classifiers
from genmodels.training import steps

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_space_to_depth_moves_each_pixel_to_its_channel():
  x = np.random.default_rng(0).normal(size=(2, 6, 4, 3)).astype(np.float32)
  y = np.asarray(classifiers.space_to_depth(x))
  assert y.shape == (2, 3, 2, 12)
  for i in range(3):
    for j in range(2):
      for a in range(2):
        for b in range(2):
          np.testing.assert_array_equal(y[:, i, j, (a * 2 + b) * 3:(a * 2 + b + 1) * 3],
                                        x[:, 2 * i + a, 2 * j + b, :])
  with pytest.raises(ValueError, match="divisible by 2"):
    classifiers.space_to_depth(np.zeros((1, 5, 4, 1)))


def test_max_pool_matches_reduce_window():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 7, 8, 3)), jnp.float32)
  want = lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
  np.testing.assert_array_equal(classifiers.max_pool_2x2(x), want)


def test_random_flip_mirrors_about_half_deterministically():
  images = jnp.asarray(np.random.default_rng(2).normal(size=(1000, 5, 6, 1)), jnp.float32)
  key = jax.random.key(3)
  out = np.asarray(classify_task.random_flip(images, key))
  np.testing.assert_array_equal(out, classify_task.random_flip(images, key))
  same = np.all(out == np.asarray(images), axis=(1, 2, 3))
  mirrored = np.all(out == np.asarray(images)[:, :, ::-1], axis=(1, 2, 3))
  assert np.all(same ^ mirrored)  # each image is one or the other, never both
  assert abs(mirrored.mean() - 0.5) < 0.05  # 3.2 binomial standard deviations


@pytest.fixture(scope="module")
def fast_model_and_vars():
  model = classifiers.FastCNN(widths=(8, 8, 16, 16), hidden=16)
  variables = jax.jit(model.init, static_argnames="train")(
      {"params": jax.random.key(0)}, jnp.zeros((1, 8, 8, 1)), train=False)
  return model, variables


def test_mirror_tta_is_mirror_invariant_and_a_distribution(fast_model_and_vars):
  model, variables = fast_model_and_vars
  x = np.random.default_rng(4).uniform(size=(6, 8, 8, 1)).astype(np.float32)
  log_p = jax.jit(lambda v, x: classify_task.classification_log_probs(model, v, x, True))
  np.testing.assert_allclose(log_p(variables, x), log_p(variables, x[:, :, ::-1]),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.exp(log_p(variables, x)).sum(-1), 1.0, rtol=1e-5)
  # The average of the two views' probabilities, against a direct computation.
  plain = jax.nn.softmax(model.apply(variables, x, train=False))
  mirror = jax.nn.softmax(model.apply(variables, x[:, :, ::-1], train=False))
  np.testing.assert_allclose(np.exp(log_p(variables, x)), (plain + mirror) / 2,
                             rtol=1e-5, atol=1e-6)
  labels = np.arange(6) % 10
  metrics = classify_task.classification_eval(model, tta_flip=True)(
      variables, {"image": x, "label": labels})
  np.testing.assert_allclose(
      metrics["loss"], -np.log(((plain + mirror) / 2)[np.arange(6), labels]), rtol=1e-5)


def test_fast_cnn_loss_falls_in_the_engine(fast_model_and_vars):
  model, variables = fast_model_and_vars
  rng = np.random.default_rng(5)
  data = {"image": rng.integers(0, 256, (16, 8, 8, 1), dtype=np.uint8),
          "label": rng.integers(0, 10, 16).astype(np.int32)}
  state = steps.create_train_state(variables, optax.adam(3e-3))
  multi = jax.jit(steps.make_multi_step(
      classify_task.classification_loss(model, label_smoothing=0.1, flip=True)))
  state, metrics = multi(state, data, jnp.tile(jnp.arange(16), (40, 1)), jax.random.key(6))
  losses = np.asarray(metrics["loss"])
  assert np.all(np.asarray(metrics["finite"]))
  assert losses[-5:].mean() < 0.6 * losses[:5].mean(), losses


@pytest.mark.skipif(not os.path.exists(f"{FASHION_DIR}/train-images-idx3-ubyte.gz"),
                    reason="needs the Debian package dataset-fashion-mnist")
def test_fast_recipe_end_to_end(tmp_path):
  """The `fast` config on 512 real images: results, figures, and learning."""
  from genmodels.classify import config as classify_config  # pylint: disable=g-import-not-at-top
  config = classify_config.get_config("fast")
  config.update(dict(num_train=512, num_test=256))
  config.train.update(epochs=3, batch_size=32, steps_per_dispatch=4)
  results = experiment.run(classify, config, str(tmp_path / "run"),
                           experiment.Options(progress=False))
  saved = json.loads((tmp_path / "run" / "results.json").read_text())
  assert saved.pop("run") == json.loads(json.dumps(results.pop("run")))
  assert saved == pytest.approx(results)
  assert results["model"] == "cnn_fast" and results["epochs"] == 3
  assert results["test_accuracy"] > 0.4  # 10 classes: chance is 0.1
  for name in ("learning_curves", "confusion", "predictions"):
    assert (tmp_path / "run" / "figures" / f"{name}.png").stat().st_size > 1000


@pytest.mark.skipif(not os.path.exists(f"{FASHION_DIR}/train-images-idx3-ubyte.gz"),
                    reason="needs the Debian package dataset-fashion-mnist")
def test_model_flag_drops_options_the_model_lacks(tmp_path):
  """--model=mlp on the CNN's config: the CNN's conv_impl must not reach the MLP."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  run = subprocess.run(
      [sys.executable, os.path.join(ROOT, "experiments", "classify.py"),
       "--config=genmodels/classify/config.py:smoke", "--model=mlp",
       f"--workdir={tmp_path}", "--noprogress"],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert run.returncode == 0, run.stderr[-2000:]
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["model"] == "mlp"
  config = json.loads((tmp_path / "config.json").read_text())
  assert "conv_impl" not in json.dumps(config.get("model_kwargs", config))


def test_fast_config_model_layout_and_no_dropout():
  """The `fast` config's model on 28x28x1: one conv at 14x14 (after the
  space-to-depth stem), pooling, two at 7x7, the Dense head, and no dropout
  (two dropout keys give the same training-mode logits)."""
  from genmodels.classify import config as classify_config  # pylint: disable=g-import-not-at-top
  config = classify_config.get_config("fast")
  model = classifiers.get_classifier(config.model, **config.model_kwargs)
  x = jnp.asarray(np.random.default_rng(7).uniform(size=(4, 28, 28, 1)), jnp.float32)
  variables = jax.jit(model.init, static_argnames="train")(
      {"params": jax.random.key(0)}, x, train=False)
  shapes = {"/".join(k.key for k in path): leaf.shape
            for path, leaf in jax.tree_util.tree_flatten_with_path(variables["params"])[0]}
  assert shapes["Conv_0/kernel"] == (3, 3, 4, 32)  # 2x2 space-to-depth: 4 channels
  assert shapes["Conv_1/kernel"] == (3, 3, 32, 64)
  assert shapes["Conv_2/kernel"] == (3, 3, 64, 64)
  assert shapes["Dense_0/kernel"] == (7 * 7 * 64, 128)  # one 2x2 pooling: 14 -> 7
  assert shapes["Dense_1/kernel"] == (128, 10)
  apply = jax.jit(lambda v, k: model.apply(v, x, train=True, rngs={"dropout": k},
                                           mutable=["batch_stats"])[0])
  np.testing.assert_array_equal(apply(variables, jax.random.key(1)),
                                apply(variables, jax.random.key(2)))
