"""A sample yardstick for image models that any model gets, explicit or not.

A model is scored from N of its samples alone (no density needed), in the
feature space of a small classifier trained on the experiment's own data:

* ``frechet_distance``: the Fréchet (2-Wasserstein) distance between Gaussians
  fitted to the sample and reference features,
  ||m1 - m2||^2 + tr(C1 + C2 - 2 (C1^1/2 C2 C1^1/2)^1/2);
* ``precision_recall``: k-NN precision and recall (Kynkäänniemi et al. 2019):
  the reference manifold is the union of balls around each reference feature
  with radius its distance to its k-th nearest reference neighbour; precision
  is the share of samples inside it, recall the share of reference features
  inside the samples' manifold built the same way;
* ``class_shares``: the share of samples per predicted class against the
  reference's predicted shares (max |difference| and total variation): mode
  collapse and class imbalance show here.

The metrics themselves (plain numpy on features) and ``nearest_neighbours``
(pixel-space neighbours for a memorisation figure) live in
``genmodels.images.sample_metrics`` and are re-exported here.

NOT FID. The features are the penultimate layer of this project's own small
CNN (``FeatureCNN``), trained on the experiment's discretised training images
and labels, not Inception-v3 on ImageNet: the Fréchet distance here is not
comparable to any published FID, only between models scored with the same
classifier (same fingerprint) at the same N.

Floors. Every metric is biased at finite N (the FD most, roughly by
tr(C)/N-type terms), so ``floors`` scores the test split against the same
training reference at the same N: what a perfect model (a sampler of the
data itself) scores. Report every model's metric with its floor beside it
(``columns``). N defaults to 5,000 (``DEFAULT_N``): FD's estimation noise at
128 feature dimensions is small there, the features of 2 x 5,000 images take
seconds on CPU and the chunked N x N distances of precision/recall about a
second; the cost that dominates is drawing 5,000 samples from each model.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from genmodels.errors import UsageError
from genmodels.images.sample_metrics import (DEFAULT_K, class_shares, frechet_distance,
                                             frechet_distance_gaussians, knn_radii,
                                             nearest_neighbours, precision_recall)
from genmodels.networks import classifiers

DEFAULT_N = 5000
# Sized to train in under a minute on 2 CPU cores at 16x16 (and 28x28, whose
# space-to-depth stem makes it about as cheap): ~3.5 epochs of 55,000 images.
TRAIN_STEPS = 1500
BATCH_SIZE = 128
LEARNING_RATE = 2e-3
EMBED_BATCH = 1000
_CACHE_VERSION = "feature-cnn-v1"  # bump when training changes but fields do not


class FeatureCNN(nn.Module):
  """[N, H, W, 1] integer levels -> (features [N, hidden], logits [N, classes]).

  Levels scaled to x / (K-1) in [0, 1]; images wider than 16 pixels go first
  through a lossless 2x2 space-to-depth (28x28x1 -> 14x14x4); then Conv 3x3
  (widths[0], stride 2), ReLU, Conv 3x3 (widths[1], stride 2), ReLU, flatten,
  Dense ``hidden`` ReLU (the features), Dense ``num_classes``. No BatchNorm or
  dropout: the parameters alone define it and evaluation equals training.
  ``conv_impl`` "xla" by default: the training loop is a plain jitted step
  (no ``lax.scan``), where XLA:CPU's own convolution is fastest.
  """

  num_levels: int
  num_classes: int
  widths: tuple[int, int] = (32, 64)
  hidden: int = 128
  conv_impl: str = "xla"

  @nn.compact
  def __call__(self, x):
    fn = classifiers.conv_function(self.conv_impl)
    x = jnp.asarray(x).astype(jnp.float32) / (self.num_levels - 1)
    if x.shape[1] > 16:
      x = classifiers.space_to_depth(x)
    for width in self.widths:
      x = nn.relu(nn.Conv(width, (3, 3), strides=2, padding="SAME",
                          conv_general_dilated=fn)(x))
    features = nn.relu(nn.Dense(self.hidden)(x.reshape((x.shape[0], -1))))
    return features, nn.Dense(self.num_classes)(features)


def _check_images(images, image_shape, num_levels, what="images") -> np.ndarray:
  x = np.asarray(images)
  if x.ndim != 4 or tuple(x.shape[1:]) != tuple(image_shape) or len(x) == 0 \
      or not np.issubdtype(x.dtype, np.integer):
    raise UsageError(f"{what} must be integer levels [N, {', '.join(map(str, image_shape))}]"
                     f", N > 0, got {x.dtype} {x.shape}")
  if x.min() < 0 or x.max() >= num_levels:
    raise UsageError(f"{what} must lie in 0..{num_levels - 1}, got "
                     f"{x.min()}..{x.max()}")
  return x


@dataclasses.dataclass
class FeatureClassifier:
  """A trained ``FeatureCNN`` with what identifies it: ``fingerprint`` (SHA-256
  of training images, labels, architecture, seed and schedule), its
  ``test_accuracy`` on the data's test split, ``train_seconds`` (0 when
  loaded), ``from_cache`` and the params file ``path`` (None: not cached)."""
  module: FeatureCNN
  params: Any
  image_shape: tuple[int, int, int]
  fingerprint: str
  test_accuracy: float | None = None
  train_seconds: float = 0.0
  from_cache: bool = False
  path: str | None = None

  def __post_init__(self):
    self._apply = jax.jit(lambda p, x: self.module.apply({"params": p}, x))

  def embed(self, images) -> tuple[np.ndarray, np.ndarray]:
    """Integer images -> (features float64 [N, hidden], predicted class int64 [N])."""
    x = _check_images(images, self.image_shape, self.module.num_levels)
    n, batch = len(x), min(EMBED_BATCH, len(x))
    padded = -(-n // batch) * batch
    x = np.concatenate([x, np.repeat(x[:1], padded - n, 0)]) if padded > n else x
    feats, preds = [], []
    for i in range(0, padded, batch):  # one batch shape: one compile
      f, logits = self._apply(self.params, x[i:i + batch].astype(np.int32))
      feats.append(np.asarray(f, np.float64))
      preds.append(np.asarray(jnp.argmax(logits, -1), np.int64))
    return np.concatenate(feats)[:n], np.concatenate(preds)[:n]

  def accuracy(self, images, labels) -> float:
    return float(np.mean(self.embed(images)[1] == np.asarray(labels)))


def fingerprint(data, module: FeatureCNN, seed: int, steps: int,
                batch_size: int, learning_rate: float) -> str:
  """SHA-256 (hex) of everything the trained parameters depend on."""
  h = hashlib.sha256()
  spec = {"version": _CACHE_VERSION, "module": repr(module), "seed": int(seed),
          "steps": int(steps), "batch_size": int(batch_size),
          "learning_rate": float(learning_rate), "shape": list(data.train.shape),
          "dtype": str(data.train.dtype), "jax": jax.__version__}
  h.update(json.dumps(spec, sort_keys=True).encode())
  h.update(np.ascontiguousarray(data.train).tobytes())
  h.update(np.ascontiguousarray(data.train_labels, np.int64).tobytes())
  return h.hexdigest()


@functools.lru_cache(maxsize=8)
def _train_step(module: FeatureCNN, steps: int, learning_rate: float):
  """(optimizer, jitted step) for a schedule: compiled once per setting."""
  tx = optax.adam(optax.cosine_decay_schedule(learning_rate, max(1, steps)))

  def loss_fn(p, x, y):
    logits = module.apply({"params": p}, x)[1]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def step(p, s, x, y):
    grads = jax.grad(loss_fn)(p, x, y)
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s

  return tx, step


def train_params(module: FeatureCNN, images: np.ndarray, labels: np.ndarray,
                 seed: int, steps: int, batch_size: int, learning_rate: float):
  """Adam (cosine decay to 0) on the mean softmax cross-entropy; batches from
  a seeded permutation per epoch; init from PRNGKey(seed). Deterministic."""
  batch_size = min(int(batch_size), len(images))
  params = module.init(jax.random.PRNGKey(seed), images[:1].astype(np.int32))["params"]
  tx, step = _train_step(module, int(steps), float(learning_rate))
  opt_state = tx.init(params)
  rng = np.random.default_rng([int(seed), 0xC1A55])
  order, pos = rng.permutation(len(images)), 0
  for _ in range(int(steps)):
    if pos + batch_size > len(order):
      order, pos = rng.permutation(len(images)), 0
    idx = order[pos:pos + batch_size]
    pos += batch_size
    params, opt_state = step(params, opt_state, images[idx].astype(np.int32),
                             labels[idx].astype(np.int32))
  return jax.block_until_ready(params)


def _sha256_file(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def _load(module, image_shape, fp, cache_dir):
  """Params from the cache when its record names this fingerprint and the
  params file's checksum matches the one recorded; else None."""
  stem = os.path.join(cache_dir, f"feature_classifier_{fp[:16]}")
  try:
    with open(stem + ".json") as f:
      record = json.load(f)
    if record.get("fingerprint") != fp or \
        _sha256_file(stem + ".msgpack") != record.get("params_sha256"):
      return None
    template = jax.eval_shape(
        lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, *image_shape), jnp.int32)))
    with open(stem + ".msgpack", "rb") as f:
      params = serialization.from_bytes(template["params"], f.read())
  except (OSError, ValueError, KeyError):
    return None
  return jax.tree.map(jnp.asarray, params), stem + ".msgpack"


def _save(params, fp, cache_dir, record) -> str:
  os.makedirs(cache_dir, exist_ok=True)
  stem = os.path.join(cache_dir, f"feature_classifier_{fp[:16]}")
  blob = serialization.to_bytes(params)
  for suffix, payload in ((".msgpack", blob), (".json", None)):
    if payload is None:
      payload = json.dumps({**record, "fingerprint": fp,
                            "params_sha256": hashlib.sha256(blob).hexdigest()},
                           indent=1).encode()
    tmp = f"{stem}{suffix}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
      f.write(payload)
    os.replace(tmp, stem + suffix)  # the record last: it vouches for the params
  return stem + ".msgpack"


def feature_classifier(data, cache_dir: str | None, seed: int = 0,
                       steps: int = TRAIN_STEPS, batch_size: int = BATCH_SIZE,
                       learning_rate: float = LEARNING_RATE,
                       **module_fields) -> FeatureClassifier:
  """The yardstick's classifier for ``data`` (a ``DiscreteImages``), trained on
  its training images and labels, or loaded from ``cache_dir``.

  The cache key is ``fingerprint`` (training images + labels + architecture +
  seed + schedule). Under ``cache_dir`` it writes
  ``feature_classifier_<first 16 hex>.msgpack`` (flax serialization of the
  params) and ``.json`` (the full fingerprint, the params file's SHA-256, test
  accuracy, train seconds); a later call with the same key loads and trains
  nothing. ``cache_dir=None``: always trains, writes nothing. NOT Inception:
  see the module docstring.
  """
  if data.train_labels is None:
    raise UsageError("the sample yardstick's classifier needs the training labels "
                     "(DiscreteImages.train_labels)")
  module = FeatureCNN(num_levels=int(data.num_levels),
                      num_classes=int(data.num_classes), **module_fields)
  image_shape = tuple(data.train.shape[1:])
  fp = fingerprint(data, module, seed, steps, batch_size, learning_rate)
  loaded = _load(module, image_shape, fp, cache_dir) if cache_dir else None
  if loaded is not None:
    clf = FeatureClassifier(module, loaded[0], image_shape, fp, from_cache=True,
                            path=loaded[1])
  else:
    start = time.perf_counter()
    params = train_params(module, np.asarray(data.train), np.asarray(data.train_labels),
                          seed, steps, batch_size, learning_rate)
    clf = FeatureClassifier(module, params, image_shape, fp,
                            train_seconds=time.perf_counter() - start)
  if data.test_labels is not None and len(data.test):
    clf.test_accuracy = clf.accuracy(data.test, data.test_labels)
  if loaded is None and cache_dir:
    clf.path = _save(clf.params, fp, cache_dir,
                     {"test_accuracy": clf.test_accuracy, "steps": int(steps),
                      "train_seconds": clf.train_seconds, "seed": int(seed),
                      "module": repr(module)})
  return clf


# --- the yardstick: samples against a training reference ----------------------

class Reference(NamedTuple):
  """Features and predicted classes of n training images (``indices``)."""
  features: np.ndarray
  classes: np.ndarray
  indices: np.ndarray


def reference(data, classifier: FeatureClassifier, n: int = DEFAULT_N,
              seed: int = 0) -> Reference:
  """min(n, training images) training images chosen by ``seed``, embedded."""
  n = min(int(n), len(data.train))
  idx = np.sort(np.random.default_rng([int(seed), 0x7EF]).choice(len(data.train), n, replace=False))
  feats, classes = classifier.embed(data.train[idx])
  return Reference(feats, classes, idx)


def score_samples(samples, ref: Reference, classifier: FeatureClassifier,
                  k: int = DEFAULT_K) -> dict:
  """The yardstick for integer image samples [N, H, W, 1] against ``ref``.

  Keys: ``fd``, ``precision``, ``recall``, ``class_share_max_abs``,
  ``class_share_tv``, ``class_shares`` and ``reference_class_shares`` (lists
  over classes), ``num_samples``, ``num_reference``, ``k``. Compare with
  ``floors`` at the same N (``num_samples``).
  """
  feats, classes = classifier.embed(samples)
  precision, recall = precision_recall(feats, ref.features, k)
  out = {"fd": frechet_distance(feats, ref.features), "precision": precision,
         "recall": recall, "num_samples": len(feats),
         "num_reference": len(ref.features), "k": int(k)}
  out.update(class_shares(classes, ref.classes, classifier.module.num_classes))
  return out


def floors(data, classifier: FeatureClassifier, n: int = DEFAULT_N, seed: int = 0,
           k: int = DEFAULT_K, ref: Reference | None = None) -> dict:
  """``score_samples`` of n test images (chosen by ``seed``) against the
  training reference of n images: the floor of every metric at this N (a
  perfect model's score). n is capped at the smaller split; ``num_samples``
  says the N used: draw that many samples for the models' rows."""
  n = min(int(n), len(data.train), len(data.test))
  ref = reference(data, classifier, n, seed) if ref is None else ref
  idx = np.sort(np.random.default_rng([int(seed), 0x7E57]).choice(len(data.test), n, replace=False))
  out = score_samples(data.test[idx], ref, classifier, k)
  out["classifier_test_accuracy"] = classifier.test_accuracy
  return out


SCALAR_KEYS = ("fd", "precision", "recall", "class_share_max_abs", "class_share_tv")


def columns(scores: dict, floor: dict, prefix: str = "sample_") -> dict:
  """A results row's flat columns: ``sample_<metric>`` and, beside each,
  ``sample_<metric>_floor``, plus ``sample_n``."""
  out = {f"{prefix}n": scores["num_samples"]}
  for key in SCALAR_KEYS:
    out[f"{prefix}{key}"] = scores[key]
    out[f"{prefix}{key}_floor"] = floor[key]
  return out
