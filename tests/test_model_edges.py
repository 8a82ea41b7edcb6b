"""Edges of every density model: points off the map, bad fields, bad requests.

* log_prob is -inf, never NaN, for huge and infinite coordinates (NaN in, NaN
  out is allowed), for every registered model at its smoke size;
* a bad size or scale field fails ``task.check_model`` with a UsageError;
* ``TrainedDensity`` refuses a non-integer or oversized n and names the shape
  the caller gave.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genmodels import models
from genmodels.density import config as config_lib
from genmodels.density import task
from genmodels.density import trained as trained_lib
from genmodels.errors import UsageError
from genmodels.models import fields
from genmodels.numerics import coords

OFF_MAP = np.array([[1e30, 1e30], [np.inf, 0.0], [-np.inf, 5.0], [0.0, np.inf],
                    [-1e30, 3.0]], np.float32)
SMOKE = config_lib.smoke()


def _variables(name):
  model = models.get_density_model(name, **SMOKE.models[name].model.to_dict())
  x = jax.random.uniform(jax.random.key(0), (64, 2), minval=-60.0, maxval=60.0)
  v = trained_lib.init_variables(model, jax.random.key(1), x)
  return model, models.with_normalizers(model, {"params": v["params"]})


@pytest.mark.parametrize("name", [
    n for n in models.cards()
    if models.get_density_model(n, **SMOKE.models[n].model.to_dict()).has_density])
def test_log_prob_is_minus_inf_off_the_map_never_nan(name):
  model, variables = _variables(name)
  lp = np.asarray(model.apply(variables, jnp.asarray(OFF_MAP), method="log_prob"))
  assert not np.isnan(lp).any(), (name, lp)
  np.testing.assert_array_equal(lp, -np.inf)
  on_map = np.asarray(model.apply(variables, jnp.zeros((1, 2)), method="log_prob"))
  assert np.isfinite(on_map).all()
  metrics = model.apply(variables, jnp.asarray(OFF_MAP), method="eval_metrics")
  for column in metrics.values():
    assert not np.isnan(np.asarray(column)).any(), (name, metrics)


def test_mask_log_prob_keeps_nan_points_nan_and_finite_points_bitwise():
  x = jnp.asarray([[1.0, 2.0], [np.nan, 0.0], [np.inf, 1.0], [3e6, 0.0]])
  lp = jnp.asarray([-1.5, -2.0, np.nan, np.nan])
  out = np.asarray(coords.mask_log_prob(x, lp, affine=coords.Affine.centred(
      (-1.0, -1.0), (1.0, 1.0))))
  assert out[0] == -1.5 and np.isnan(out[1]) and out[2] == -np.inf and out[3] == -np.inf


def test_affine_conventions_are_the_old_arithmetic():
  x = jnp.asarray([[10.0, -20.0], [179.0, 89.5]])
  lo, hi = np.float32([-180.0, -90.0]), np.float32([180.0, 90.0])
  np.testing.assert_array_equal(coords.Affine.unit_box(lo, hi).to_unit(x),
                                (x - lo) / (hi - lo))
  np.testing.assert_array_equal(coords.Affine.centred(lo, hi).to_unit(x),
                                (x - (lo + hi) / 2) / ((hi - lo) / 2))
  a = coords.Affine.standardise((18.0, 0.0), (88.0, 58.0))
  np.testing.assert_array_equal(a.from_unit(a.to_unit(x)), x)
  assert a.log_det == float(np.sum(np.log((88.0, 58.0))))


@pytest.mark.parametrize("name,bad", [
    ("ebm", dict(buffer_size=0)),
    ("ebm", dict(quadrature_cells=(0, 4))),
    ("gmm", dict(scale=(0.0, 0.0))),
    ("gmm", dict(num_components=0)),
    ("gaussian_full", dict(scale=(1.0, float("nan")))),
    ("diffusion", dict(num_sampling_steps=0)),
    ("diffusion", dict(logsnr_min=5.0, logsnr_max=5.0)),
    ("flow_matching", dict(num_ode_steps=0)),
    ("realnvp", dict(num_layers=0)),
    ("spline_flow", dict(num_bins=0)),
    ("autoregressive", dict(bins=(0, 36))),
    ("vae", dict(decoder_blocks=0)),
    ("gan", dict(generator_hidden=0)),
    ("histogram", dict(lo=(0.0, 0.0), hi=(0.0, 1.0))),
])
def test_bad_fields_fail_the_config_check_in_one_line(name, bad):
  fields_ = {**SMOKE.models[name].model.to_dict(), **bad}
  with pytest.raises(UsageError) as e:
    task.check_model(name, fields_)
  message = str(e.value)
  assert "\n" not in message and next(iter(bad)) in message


def test_the_smoke_fields_pass_the_check():
  for name in SMOKE.models:
    task.check_model(name, SMOKE.models[name].model.to_dict())


def test_require_names_what_the_field_must_be():
  class Fake:
    hidden, depth, cells, scale = 0, -1, (3, 0), (1.0, -2.0)
  for kw, must in [(dict(positive=("hidden",)), "positive integer"),
                   (dict(nonnegative=("depth",)), "integer >= 0"),
                   (dict(positive_pairs=("cells",)), "one per axis"),
                   (dict(positive_real=("scale",)), "> 0")]:
    with pytest.raises(UsageError, match=must):
      fields.require(Fake(), **kw)
  Fake.hidden = True  # a bool is not a count
  with pytest.raises(UsageError):
    fields.require(Fake(), positive=("hidden",))


@pytest.fixture(scope="module")
def box_density():
  model = models.get_density_model("box")
  v = trained_lib.init_variables(model, jax.random.key(0),
                                 jnp.asarray([[-10.0, -5.0], [10.0, 5.0]]))
  return trained_lib.TrainedDensity("box", model, v["params"])


@pytest.mark.parametrize("n", [2.7, 3.0, "5", None, True])
def test_sample_refuses_a_non_integer_n(box_density, n):
  with pytest.raises(UsageError, match="integer"):
    box_density.sample(jax.random.key(0), n)


def test_sample_refuses_n_beyond_the_limit_before_allocating(box_density):
  limit = trained_lib.TrainedDensity.MAX_SAMPLES
  with pytest.raises(UsageError, match="MAX_SAMPLES"):
    box_density.sample(jax.random.key(0), 10**12)
  with pytest.raises(UsageError):
    box_density.sample(jax.random.key(0), limit + 1)
  with pytest.raises(UsageError):
    box_density.sample(jax.random.key(0), 0)
  assert box_density.sample(jax.random.key(0), np.int64(3)).shape == (3, 2)


@pytest.mark.parametrize("x,shape", [([], "(0,)"), ([[1.0, 2.0, 3.0]], "(1, 3)"),
                                     (np.zeros((2, 2, 2)), "(2, 2, 2)")])
def test_log_prob_names_the_shape_the_caller_gave(box_density, x, shape):
  with pytest.raises(UsageError) as e:
    box_density.log_prob(x)
  assert f"got {shape}" in str(e.value)
