"""Metrics on feature sets and pixel-space neighbours for the image yardstick.

Plain float64 numpy, no model: ``genmodels.images.yardstick`` computes the
features (its own classifier's, NOT Inception's) and re-exports these.

* Fréchet distance between Gaussians fitted to two feature sets;
* k-NN precision and recall (Kynkäänniemi et al. 2019);
* class shares of predicted classes (max |difference|, total variation);
* nearest training images of samples in pixel space (memorisation figures).
"""

from __future__ import annotations

import numpy as np

from genmodels.errors import UsageError

DEFAULT_K = 3


def _as_features(x, what) -> np.ndarray:
  x = np.asarray(x, np.float64)
  if x.ndim != 2 or len(x) < 2:
    raise UsageError(f"{what} must be features [N, F] with N >= 2, got {x.shape}")
  return x


def _sqrtm_psd(c: np.ndarray) -> np.ndarray:
  """Symmetric PSD square root by eigendecomposition (negative rounding -> 0)."""
  w, v = np.linalg.eigh((c + c.T) / 2)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance_gaussians(m1, c1, m2, c2) -> float:
  """||m1 - m2||^2 + tr C1 + tr C2 - 2 tr (C1^1/2 C2 C1^1/2)^1/2, float64.

  The trace term by eigenvalues of the symmetric PSD product (clipped at 0
  against rounding); the result is clipped at 0 for the same reason.
  """
  m1, m2 = np.asarray(m1, np.float64), np.asarray(m2, np.float64)
  c1, c2 = np.atleast_2d(np.asarray(c1, np.float64)), np.atleast_2d(np.asarray(c2, np.float64))
  s1 = _sqrtm_psd(c1)
  prod = s1 @ c2 @ s1
  eig = np.linalg.eigvalsh((prod + prod.T) / 2)
  cross = np.sum(np.sqrt(np.clip(eig, 0.0, None)))
  value = np.sum((m1 - m2) ** 2) + np.trace(c1) + np.trace(c2) - 2.0 * cross
  return float(max(value, 0.0))


def frechet_distance(features_a, features_b) -> float:
  """Fréchet distance between Gaussians fitted (mean, covariance with ddof=1)
  to two feature sets [N, F] and [M, F]."""
  a, b = _as_features(features_a, "features_a"), _as_features(features_b, "features_b")
  return frechet_distance_gaussians(a.mean(0), np.cov(a, rowvar=False),
                                    b.mean(0), np.cov(b, rowvar=False))


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
  return np.maximum(d, 0.0)


def knn_radii(features, k: int = DEFAULT_K, chunk: int = 1024) -> np.ndarray:
  """Each point's squared distance to its k-th nearest other point, [N]."""
  x = _as_features(features, "features")
  if not 1 <= k < len(x):
    raise UsageError(f"k must be in 1..N-1 = {len(x) - 1}, got {k}")
  out = np.empty(len(x))
  for i in range(0, len(x), chunk):
    d = _sq_dists(x[i:i + chunk], x)
    out[i:i + chunk] = np.partition(d, k, axis=1)[:, k]  # index 0: the point itself
  return out


def _share_inside(points, centres, radii, chunk) -> float:
  inside = np.zeros(len(points), bool)
  for i in range(0, len(points), chunk):
    d = _sq_dists(points[i:i + chunk], centres)
    inside[i:i + chunk] = np.any(d <= radii[None, :], axis=1)
  return float(inside.mean())


def precision_recall(sample_features, reference_features, k: int = DEFAULT_K,
                     chunk: int = 1024) -> tuple[float, float]:
  """k-NN (precision, recall) of samples against a reference (Kynkäänniemi et
  al. 2019): precision = share of samples within the k-th-neighbour radius of
  some reference point; recall = share of reference points within the
  k-th-neighbour radius (among samples) of some sample."""
  s = _as_features(sample_features, "sample_features")
  r = _as_features(reference_features, "reference_features")
  precision = _share_inside(s, r, knn_radii(r, k, chunk), chunk)
  recall = _share_inside(r, s, knn_radii(s, k, chunk), chunk)
  return precision, recall


def class_shares(sample_classes, reference_classes, num_classes: int) -> dict:
  """Shares p (samples) and q (reference) per class; max_abs = max_c |p_c - q_c|,
  tv = (1/2) sum_c |p_c - q_c| (a sampler of one class c scores tv = 1 - q_c)."""
  p = np.bincount(np.asarray(sample_classes), minlength=num_classes) / len(sample_classes)
  q = np.bincount(np.asarray(reference_classes), minlength=num_classes) / len(reference_classes)
  diff = np.abs(p - q)
  return {"class_share_max_abs": float(diff.max()), "class_share_tv": float(diff.sum() / 2),
          "class_shares": [float(v) for v in p], "reference_class_shares": [float(v) for v in q]}



def nearest_neighbours(samples, train_images, k: int = 1,
                       max_entries: int = 1 << 23) -> tuple[np.ndarray, np.ndarray]:
  """The k nearest training images of each sample in pixel space: L2 over the
  flattened integer levels, ties to the lower training index.

  Returns (indices int64 [N, k], distances float64 [N, k]), nearest first.
  Squared distances are exact integers (float64 matmuls of integers < 2^53),
  computed in chunks of at most ``max_entries`` pairs.
  """
  s = np.asarray(samples).reshape(len(samples), -1).astype(np.float64)
  t = np.asarray(train_images).reshape(len(train_images), -1).astype(np.float64)
  if s.shape[1] != t.shape[1] or not 1 <= k <= len(t):
    raise UsageError(f"samples {np.shape(samples)} and train images "
                     f"{np.shape(train_images)} must have the same image shape, k in 1..M")
  m = len(t)
  t_sq = (t * t).sum(1)
  chunk = max(1, max_entries // m)
  idx_out = np.empty((len(s), k), np.int64)
  d_out = np.empty((len(s), k), np.float64)
  for i in range(0, len(s), chunk):
    a = s[i:i + chunk]
    d2 = np.rint((a * a).sum(1)[:, None] + t_sq[None, :] - 2.0 * a @ t.T).astype(np.int64)
    key = d2 * m + np.arange(m)[None, :]  # unique: ties broken by index
    part = np.argpartition(key, k - 1, axis=1)[:, :k] if k < m else np.tile(np.arange(m), (len(a), 1))
    order = np.argsort(np.take_along_axis(key, part, 1), axis=1)
    best = np.take_along_axis(part, order, 1)
    idx_out[i:i + chunk] = best
    d_out[i:i + chunk] = np.sqrt(np.take_along_axis(d2, best, 1))
  return idx_out, d_out
