"""The autoencoder, the probe maths, and the latent_space experiment end to end."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genmodels import latent
from genmodels.data import cylinders
from genmodels.latent import config as latent_space_config
from genmodels.latent import probes
from genmodels.latent import task as latent_task
from genmodels.networks import autoencoder as ae_lib
from genmodels.training import experiment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_probe_recovers_an_affine_map_exactly():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(200, 2))
  w, b = np.array([[2.0, -1.0], [0.5, 3.0]]), np.array([0.1, -0.2])
  probe = probes.fit_linear_probe(z, z @ w + b)
  np.testing.assert_allclose(probe.weight, w, atol=1e-10)
  np.testing.assert_allclose(probe.bias, b, atol=1e-10)
  np.testing.assert_allclose(probes.r2_score(z @ w + b, probe(z)), [1.0, 1.0])
  np.testing.assert_allclose(probe.inverse(probe(z[:5])), z[:5], atol=1e-10)
  one = probes.fit_linear_probe(z, z[:, 0])  # A single target.
  assert one.weight.shape == (2, 1) and one.bias.shape == (1,)


def test_r2_of_known_cases():
  y = np.arange(10.0)
  assert probes.r2_score(y, np.full(10, y.mean())) == pytest.approx(0.0)
  assert probes.r2_score(y, y + 1.0) == pytest.approx(1 - 10 / 82.5)
  # A linear probe cannot read a curved function: R^2 of y = x^2 on [-1, 1] is 0.
  x = np.linspace(-1, 1, 101)[:, None]
  assert probes.r2_score(x[:, 0] ** 2, probes.fit_linear_probe(x, x[:, 0] ** 2)(x)) < 1e-6


def test_volume_from_latent():
  probe = probes.LinearProbe(weight=np.eye(2), bias=np.zeros(2))
  np.testing.assert_allclose(probes.volume_from_latent(probe, [[0.2, 0.5]]),
                             [np.pi * 0.04 * 0.5])


def test_sliced_wasserstein_is_small_for_the_prior_only():
  sw = jax.jit(latent_task.sliced_wasserstein_uniform)
  rng = np.random.default_rng(0)
  uniform = rng.uniform(-1, 1, size=(4096, 2)).astype(np.float32)
  key = jax.random.key(0)
  assert float(sw(uniform, key)) < 1e-3
  assert float(sw(rng.normal(size=(4096, 2)).astype(np.float32), key)) > 0.05
  assert float(sw(uniform * 0.5, key)) > 0.02  # The scale matters too.


def test_autoencoder_shapes():
  model = ae_lib.Autoencoder(image_shape=(32, 32, 1), hidden=(32, 16), linear_skip=True)
  x = jax.ShapeDtypeStruct((4, 32, 32, 1), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  assert jax.eval_shape(model.apply, variables, x).shape == (4, 32, 32, 1)
  z = jax.eval_shape(lambda v, x: model.apply(v, x, method="encode"), variables, x)
  assert z.shape == (4, 2)
  assert set(variables["params"]["encoder"]) == {"Dense_0", "Dense_1", "to_latent", "linear"}


def test_prior_matched_start_is_the_standardised_pca_plane():
  data = cylinders.sample(600, seed=0)
  variables = {"params": {"encoder": {"linear": {"kernel": np.zeros((1024, 2)),
                                                 "bias": np.zeros(2)}}}}
  variables, angle = latent_task.prior_matched_pca_init(variables, data.image)
  assert 0.0 <= angle < 90.0
  lin = variables["params"]["encoder"]["linear"]
  z = data.image.reshape(600, -1) @ np.asarray(lin["kernel"]) + np.asarray(lin["bias"])
  np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-4)
  np.testing.assert_allclose(z.std(0), 1 / np.sqrt(3), rtol=1e-3)
  # It spans the top two principal directions.
  _, directions, _ = ae_lib.principal_components(data.image, 2)
  kernel = np.asarray(lin["kernel"], np.float64)
  residual = kernel - directions.T @ (directions @ kernel)
  assert np.abs(residual).max() < 1e-4 * np.abs(kernel).max()
  with pytest.raises(ValueError, match="linear_skip"):
    ae_lib.pca_init({"params": {"encoder": {}}}, data.image)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("latent_space"))
  config = latent_space_config.get_config("smoke")
  results = experiment.run(latent, config, workdir, experiment.Options(progress=False))
  return workdir, results


def test_smoke_run_learns_radius_and_height(smoke_run):
  """300 steps on 4,000 pictures (seed 0) measured R^2 0.968 / 0.981 and MSE 0.013."""
  workdir, results = smoke_run
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f)["probe_r2_height"] == pytest.approx(results["probe_r2_height"])
  assert results["probe_r2_radius"] >= 0.94
  assert results["probe_r2_height"] >= 0.95
  # The latent beats the linear baseline (the first two principal components)
  # where that is curved: the height.
  assert results["probe_r2_height"] > results["pca_probe_r2_height"] + 0.04
  # Volume is not linear in the latent, but pi r^2 h from the probe's (r, h) is good.
  assert results["volume_r2"] >= 0.95
  assert results["volume_r2"] > results["volume_linear_probe_r2"] + 0.05
  assert results["reconstruction_mse"] < 0.02
  # The decoded walk gets wider along one axis and taller along the other.
  assert results["walk_width_increasing_along_radius"] >= 0.8
  assert results["walk_height_increasing_along_height"] >= 0.8
  for name in ("latent_walk", "latent_scatter", "probe", "reconstructions"):
    assert os.path.getsize(os.path.join(workdir, "figures", f"{name}.png")) > 5000


