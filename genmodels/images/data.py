"""Discrete images for density estimation: Fashion-MNIST (or synthetic blobs),
resized and quantised to K grey levels.

The sample space is integer images x in {0, ..., K-1}^(H x W x 1), so every
model's likelihood is a probability *mass* and bits per dimension are exact:
no dequantization noise, no bound.

The discretisation (``discretise``), exactly:

1. *Resize* the 28x28 uint8 image v (grey levels 0..255) to S x S by exact
   area averaging: with L = lcm(28, S), each source pixel is replicated into a
   (L/28) x (L/28) block of an L x L image, which is then mean-pooled in
   (L/S) x (L/S) blocks. Where 28 is a multiple of S this is plain
   (28/S) x (28/S) mean-pooling (S = 14: 2x2; S = 4: 7x7; S = 28: the
   identity). For S = 16 (the book's size) 28/16 = 1.75 is not a whole number,
   so 2x2 pooling cannot give 16x16: each output pixel is the area-weighted
   mean of the 1.75 x 1.75 source window it covers (integer weights W[i, j] in
   {0..4}, row sums 7, over 49 upsampled pixels). The pooled value is the
   rational number P = T / B with T = sum of weights x grey levels (an integer)
   and B = (L/S)^2, computed in integers: no rounding anywhere.
2. *Quantise* to K levels as the book does (``(img / (256 / K)).astype(int)``):
   k = floor(P * K / 256) = (T * K) // (256 * B), in {0..K-1}. K = 256 with S = 28
   keeps the raw bytes.

Settings (``SETTINGS``): "book" = 16x16 with 4 levels, the book's chapter-5
PixelCNN setting (the book resizes with ``tf.image.resize``'s bilinear
filter; area averaging is the exact, filter-free counterpart); "full" = 28x28
with 256 levels, the raw data.

``dataset="synthetic"`` draws 28x28 uint8 images of 1 to 3 bright Gaussian
blobs on black from the seed (no files needed: the tests' data), then
discretises them the same way.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np

from genmodels.errors import UsageError

SOURCE_SIZE = 28
SETTINGS = {"book": (16, 4), "full": (28, 256)}  # name: (image size S, levels K)
DATASETS = ("fashion_mnist_offline", "synthetic")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
TEST_SPLIT_SIZE = 10_000  # Fashion-MNIST's test split
NUM_SYNTHETIC_CLASSES = 3  # 1, 2 or 3 blobs


@dataclasses.dataclass(frozen=True)
class DiscreteImages:
  """Integer images in {0..num_levels-1}, uint8 [N, S, S, 1] per split.

  ``validation`` is the end of the training split (never trained on); ``test``
  is the dataset's own test split.
  """
  train: np.ndarray
  validation: np.ndarray
  test: np.ndarray
  num_levels: int
  dataset: str
  # Class labels, int64 [N] per split (Fashion-MNIST's 10 classes; for the
  # synthetic blobs, the number of blobs less one): the sample yardstick's
  # classifier trains on them. No model sees them.
  train_labels: np.ndarray | None = None
  validation_labels: np.ndarray | None = None
  test_labels: np.ndarray | None = None

  @property
  def num_classes(self) -> int:
    return 10 if self.dataset == "fashion_mnist_offline" else NUM_SYNTHETIC_CLASSES

  @property
  def shape(self) -> tuple[int, int, int]:
    return tuple(self.train.shape[1:])

  @property
  def num_dims(self) -> int:
    """Dimensions per image (H * W * C): the bits-per-dimension divisor."""
    return int(np.prod(self.shape))


def setting_name(image_size: int, num_levels: int) -> str:
  """"book", "full", or "SxS, K levels" for any other pair."""
  for name, pair in SETTINGS.items():
    if pair == (image_size, num_levels):
      return name
  return f"{image_size}x{image_size}, {num_levels} levels"


def area_weights(source: int, size: int) -> tuple[np.ndarray, int]:
  """Integer weights W [size, source] and the block area B of exact area resizing.

  With L = lcm(source, size), output pixel i covers upsampled positions
  [i * L/size, (i+1) * L/size) and source pixel j covers [j * L/source, ...):
  W[i, j] counts their overlap, so (W v W^T)[i, k] / B is the mean of the
  area output pixel (i, k) covers, B = (L/size)^2.
  """
  if not 1 <= size <= source:
    raise UsageError(f"image_size must be in 1..{source} (the images are resized "
                     f"down from {source}x{source}), got {size}")
  lcm = source * size // math.gcd(source, size)
  owner_out = np.arange(lcm) // (lcm // size)
  owner_src = np.arange(lcm) // (lcm // source)
  weights = np.zeros((size, source), np.int64)
  np.add.at(weights, (owner_out, owner_src), 1)
  return weights, (lcm // size) ** 2


def discretise(images: np.ndarray, image_size: int, num_levels: int,
               chunk: int = 8192) -> np.ndarray:
  """uint8 [N, 28, 28, 1] (grey levels 0..255) -> uint8 [N, S, S, 1] in {0..K-1}.

  Exact area resize to S x S, then k = floor(mean * K / 256), all in integers
  (see the module's docstring).
  """
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 1 \
      or images.shape[1] != images.shape[2]:
    raise UsageError(f"discretise takes uint8 [N, S, S, 1] images, got "
                     f"{images.dtype} {images.shape}")
  if not 2 <= num_levels <= 256:
    raise UsageError(f"num_levels must be in 2..256, got {num_levels}")
  weights, block = area_weights(images.shape[1], image_size)
  w = weights.astype(np.float64)
  out = np.empty((len(images), image_size, image_size, 1), np.uint8)
  for start in range(0, len(images), chunk):
    # The integer sums T by two float64 matmuls (BLAS): every partial sum is an
    # integer below 255 * 28^2 < 2^53, so float64 holds it exactly.
    v = images[start:start + chunk, ..., 0].astype(np.float64)
    total = np.rint(w @ v @ w.T).astype(np.int64)
    out[start:start + chunk, ..., 0] = (total * num_levels) // (256 * block)
  return out


def synthetic_images(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
  """n uint8 [28, 28, 1] images: 1 to 3 Gaussian blobs (random centre, width,
  brightness) on black, the brightest clipped to 255; and their labels, the
  number of blobs less one (int64 [n])."""
  yy, xx = np.mgrid[0:SOURCE_SIZE, 0:SOURCE_SIZE].astype(np.float64)
  count = rng.integers(1, 4, size=n)
  img = np.zeros((n, SOURCE_SIZE, SOURCE_SIZE))
  for b in range(3):
    cy, cx = rng.uniform(5, 23, size=(2, n))
    width = rng.uniform(2.0, 6.0, size=n)
    bright = rng.uniform(120, 300, size=n) * (b < count)
    d2 = (yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2
    img += bright[:, None, None] * np.exp(-0.5 * d2 / width[:, None, None] ** 2)
  return (np.clip(np.rint(img), 0, 255).astype(np.uint8)[..., None],
          (count - 1).astype(np.int64))


def _split_sizes(config, available_train: int, available_test: int):
  num_val = int(config.num_validation)
  num_train = int(config.num_train) or available_train - num_val
  num_test = int(config.num_test) or available_test
  if num_train <= 0 or num_train + num_val > available_train:
    raise UsageError(
        f"num_train={num_train:,} + num_validation={num_val:,} exceed the "
        f"{available_train:,} training images: lower them (num_train=0 takes "
        f"all but the validation images)")
  if num_test > available_test:
    raise UsageError(f"num_test={num_test:,} exceeds the {available_test:,} test "
                     f"images: lower it (0 takes the whole test split)")
  return num_train, num_val, num_test


def load_raw(config) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
  """The 28x28 uint8 (images, labels) of train, validation and test that
  ``config`` asks for."""
  if config.dataset == "synthetic":
    if not (config.num_train > 0 and config.num_test > 0):
      raise UsageError("dataset='synthetic' needs num_train > 0 and num_test > 0 "
                       "(there is no split to take whole)")
    rng = np.random.default_rng([int(config.seed), 0x1A6E])
    n_tr, n_val, n_te = int(config.num_train), int(config.num_validation), int(config.num_test)
    pool, labels = synthetic_images(rng, n_tr + n_val + n_te)
    cuts = [(0, n_tr), (n_tr, n_tr + n_val), (n_tr + n_val, len(pool))]
    return tuple((pool[a:b], labels[a:b]) for a, b in cuts)
  if config.dataset != "fashion_mnist_offline":
    raise UsageError(f"unknown dataset {config.dataset!r}; valid: {', '.join(DATASETS)}")
  # Imported here: it imports tfds (seconds), which the synthetic data never need.
  from genmodels.data import images as images_lib  # pylint: disable=g-import-not-at-top
  manual_dir = config.get("manual_dir") or FASHION_MNIST_DIR
  if not os.path.isdir(manual_dir):
    raise images_lib.DatasetUnavailableError(
        f"Fashion-MNIST folder {manual_dir} not found: install the Debian package "
        f"dataset-fashion-mnist, pass --config.manual_dir=<folder with the 4 "
        f"*-ubyte.gz files>, or use --config.dataset=synthetic")
  num_train, num_val, num_test = _split_sizes(config, 60_000, TEST_SPLIT_SIZE)
  # The IDX files directly (1 s), not through the tfds builder of
  # ``load_image_dataset``, which would first write an array_record copy.
  train, train_y = images_lib.read_fashion_mnist(manual_dir, "train")
  test, test_y = images_lib.read_fashion_mnist(manual_dir, "t10k")
  # Validation: the num_val training images after the first num_train.
  val = slice(num_train, num_train + num_val)
  return ((train[:num_train], train_y[:num_train]), (train[val], train_y[val]),
          (test[:num_test], test_y[:num_test]))


def load(config) -> DiscreteImages:
  """The discretised splits of ``config`` (dataset, sizes, image_size, num_levels)."""
  (train, train_y), (val, val_y), (test, test_y) = load_raw(config)
  s, k = int(config.image_size), int(config.num_levels)
  return DiscreteImages(discretise(train, s, k), discretise(val, s, k),
                        discretise(test, s, k), k, config.dataset,
                        train_y, val_y, test_y)
