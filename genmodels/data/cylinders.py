"""Small grayscale pictures of cylinders: chapter 1's latent-space example.

A cylinder is described completely by two numbers, its radius r and height h,
yet a picture of it has S x S pixels. ``render(radius, height)`` draws the side
view, seen from slightly above, standing on a fixed floor line and centred
left-right:

* the body is a rectangle of width 2r and height h, shaded like a lit cylinder
  (bright in the middle, darker at the sides);
* the top is a bright ellipse of half-axes (r, TILT * r), the bottom edge the
  lower half of the same ellipse.

Lengths are fractions of the image side (the image is the unit square). Edges
are anti-aliased with a signed-distance ramp one pixel wide, so every pixel is
a smooth function of (r, h): a small change of r or h changes the picture a
little, which is what lets an autoencoder find the two numbers again.

Rendering is deterministic in (r, h); ``sample`` draws r and h uniformly from
``RADIUS_RANGE`` x ``HEIGHT_RANGE`` from a seed. Images are float32 in [0, 1],
shape [N, S, S, 1].
"""

from typing import NamedTuple

import numpy as np

from genmodels.errors import UsageError

RADIUS_RANGE = (0.10, 0.40)  # Below ~0.1 a cylinder is under 6 pixels wide at 32 x 32.
HEIGHT_RANGE = (0.15, 0.70)
FLOOR = 0.14  # Height of the base's centre above the image's bottom edge.
TILT = 0.3  # Ellipse half-height over radius: how far above we look from.
DEFAULT_SIZE = 32

# Distinct streams so that the test set does not change with num_train.
_SPLIT_STREAM = {"train": 0, "validation": 1, "test": 2}


class Cylinders(NamedTuple):
  """Images [N, S, S, 1] float32 and their factors radius [N], height [N]."""
  image: np.ndarray
  radius: np.ndarray
  height: np.ndarray

  def as_dict(self) -> dict[str, np.ndarray]:
    return {"image": self.image, "radius": self.radius, "height": self.height}


def volume(radius, height):
  """pi r^2 h, in (image side)^3."""
  return np.pi * np.square(radius) * height


def _coverage(signed_distance, pixel):
  """Fraction of a pixel inside a shape, from the signed distance (inside > 0)."""
  return np.clip(0.5 + signed_distance / pixel, 0.0, 1.0)


def _ellipse_sd(x, y, a, b):
  """Approximate signed distance to the ellipse x^2/a^2 + y^2/b^2 = 1 (inside > 0)."""
  # First-order: the implicit function divided by its gradient's norm.
  f = np.sqrt(np.square(x / a) + np.square(y / b))
  grad = np.sqrt(np.square(x / a**2) + np.square(y / b**2)) / np.maximum(f, 1e-6)
  return (1.0 - f) / np.maximum(grad, 1e-6)


def render(radius, height, size: int = DEFAULT_SIZE) -> np.ndarray:
  """Side views of cylinders, float32 [N, size, size, 1] in [0, 1].

  Args:
    radius: [N] radii, as fractions of the image side.
    height: [N] heights, as fractions of the image side.
    size: pixels on a side.
  """
  r = np.asarray(radius, np.float32).reshape(-1, 1, 1)
  h = np.asarray(height, np.float32).reshape(-1, 1, 1)
  if r.shape != h.shape:
    raise UsageError(f"radius and height must have the same size, got "
                     f"{np.size(radius)} and {np.size(height)}")
  if np.any(r <= 0) or np.any(h <= 0):
    raise UsageError("radius and height must be positive")
  pixel = 1.0 / size
  centres = ((np.arange(size) + 0.5) * pixel).astype(np.float32)
  x = (centres - 0.5)[None, None, :]  # Horizontal, 0 at the axis.
  y = centres[::-1][None, :, None]  # Vertical, up; row 0 is the top.
  e = TILT * r
  top = FLOOR + h
  # Body: the rectangle |x| <= r, FLOOR <= y <= top, with the base's lower
  # half-ellipse below it. (The top ellipse is drawn over it.)
  rect_sd = np.minimum(np.minimum(r - np.abs(x), y - FLOOR), top - y)
  body = np.maximum(_coverage(rect_sd, pixel),
                    _coverage(_ellipse_sd(x, y - FLOOR, r, e), pixel))
  cap = _coverage(_ellipse_sd(x, y - top, r, e), pixel)
  shade = 0.35 + 0.55 * np.sqrt(np.clip(1.0 - np.square(x / r), 0.0, 1.0))
  image = cap * 1.0 + (1.0 - cap) * body * shade
  return image.astype(np.float32)[..., None]


def sample(n: int, seed: int = 0, split: str = "train",
           size: int = DEFAULT_SIZE) -> Cylinders:
  """n cylinders with r and h uniform over their ranges, from (seed, split)."""
  if n <= 0:
    raise UsageError(f"number of cylinders must be positive, got {n}")
  if split not in _SPLIT_STREAM:
    raise UsageError(f"unknown split {split!r}; valid: {', '.join(_SPLIT_STREAM)}")
  rng = np.random.default_rng([seed, _SPLIT_STREAM[split]])
  radius = rng.uniform(*RADIUS_RANGE, size=n).astype(np.float32)
  height = rng.uniform(*HEIGHT_RANGE, size=n).astype(np.float32)
  image = np.concatenate([render(radius[i:i + 4096], height[i:i + 4096], size)
                          for i in range(0, n, 4096)])
  return Cylinders(image=image, radius=radius, height=height)


def load(num_train: int, num_test: int, seed: int = 0,
         size: int = DEFAULT_SIZE) -> tuple[Cylinders, Cylinders]:
  """(train, test) sets; the test set depends only on (seed, num_test)."""
  return (sample(num_train, seed, "train", size),
          sample(num_test, seed, "test", size))


def measure(images: np.ndarray, threshold: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
  """Crude (width, height) of the bright shape in each image, in image sides.

  The number of columns (rows) whose brightest pixel passes ``threshold``, over
  the image size. The height includes the two half-ellipses (about h + 2 TILT r).
  Used to check what a decoder draws, without a model.
  """
  images = np.asarray(images)[..., 0]
  size = images.shape[-1]
  on = images > threshold
  width = on.any(axis=1).sum(-1) / size
  height = on.any(axis=2).sum(-1) / size
  return width, height
