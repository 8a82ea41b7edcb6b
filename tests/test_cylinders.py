"""Pictures of cylinders: deterministic, smooth in (r, h), the right size."""

import numpy as np
import pytest

from genmodels.data import cylinders


def test_shape_range_and_determinism():
  img = cylinders.render([0.2, 0.3], [0.4, 0.6])
  assert img.shape == (2, 32, 32, 1) and img.dtype == np.float32
  assert img.min() >= 0.0 and img.max() <= 1.0
  np.testing.assert_array_equal(img, cylinders.render([0.2, 0.3], [0.4, 0.6]))
  assert cylinders.render([0.2], [0.4], size=16).shape == (1, 16, 16, 1)
  # Edge pixels stay dark for the largest cylinder: nothing is cut off.
  big = cylinders.render([cylinders.RADIUS_RANGE[1]], [cylinders.HEIGHT_RANGE[1]])[0, ..., 0]
  assert big[:, 0].max() < 0.05 and big[:, -1].max() < 0.05 and big[0].max() < 0.05


def test_size_matches_radius_and_height():
  r = np.linspace(*cylinders.RADIUS_RANGE, 7)
  h = np.linspace(*cylinders.HEIGHT_RANGE, 7)
  width, height = cylinders.measure(cylinders.render(r, h))
  pixel = 1 / 32
  np.testing.assert_allclose(width, 2 * r, atol=2 * pixel)  # Soft edges: +-1 pixel.
  # The height includes the two half-ellipses of the caps.
  np.testing.assert_allclose(height, h + 2 * cylinders.TILT * r, atol=2.5 * pixel)


def test_brightness_grows_with_radius_and_height():
  r = np.linspace(*cylinders.RADIUS_RANGE, 20)
  by_r = cylinders.render(r, np.full(20, 0.4)).sum(axis=(1, 2, 3))
  h = np.linspace(*cylinders.HEIGHT_RANGE, 20)
  by_h = cylinders.render(np.full(20, 0.25), h).sum(axis=(1, 2, 3))
  assert np.all(np.diff(by_r) > 0) and np.all(np.diff(by_h) > 0)


def test_anti_aliased_pictures_change_smoothly():
  """A change of r or h by 1/20 of a pixel moves no pixel by more than ~1/10."""
  eps = 1 / 32 / 20
  rng = np.random.default_rng(0)
  r = rng.uniform(*cylinders.RADIUS_RANGE, 50)
  h = rng.uniform(*cylinders.HEIGHT_RANGE, 50)
  base = cylinders.render(r, h)
  assert np.abs(cylinders.render(r + eps, h) - base).max() < 0.1
  assert np.abs(cylinders.render(r, h + eps) - base).max() < 0.1
  # ... while a hard-edged renderer would flip whole pixels somewhere.
  assert np.abs(cylinders.render(r + 20 * eps, h) - base).max() > 0.3


def test_sample_splits_and_volume():
  train, test = cylinders.load(100, 50, seed=1)
  assert train.image.shape == (100, 32, 32, 1) and test.radius.shape == (50,)
  again, _ = cylinders.load(100, 50, seed=1)
  np.testing.assert_array_equal(train.image, again.image)
  np.testing.assert_array_equal(train.image, cylinders.render(train.radius, train.height))
  assert not np.allclose(train.radius[:50], test.radius)
  lo, hi = cylinders.RADIUS_RANGE
  assert train.radius.min() >= lo and train.radius.max() <= hi
  np.testing.assert_allclose(cylinders.volume(2.0, 3.0), np.pi * 12.0)
  assert set(train.as_dict()) == {"image", "radius", "height"}


def test_bad_inputs():
  with pytest.raises(ValueError, match="positive"):
    cylinders.render([0.0], [0.3])
  with pytest.raises(ValueError, match="same size"):
    cylinders.render([0.2, 0.3], [0.3])
  with pytest.raises(ValueError, match="split"):
    cylinders.sample(10, split="dev")
  with pytest.raises(ValueError, match="positive"):
    cylinders.sample(0)
