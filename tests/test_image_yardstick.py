"""Tests of the image sample yardstick: metrics against closed forms and brute
force, the floors against a corrupted copy, the classifier's determinism and
cache."""

import os

import jax
import numpy as np
import pytest

from genmodels.errors import UsageError
from genmodels.images import data as data_lib
from genmodels.images import yardstick

# A tiny classifier on synthetic blobs (8x8, 4 levels): seconds to train.
TINY = dict(steps=300, batch_size=64, widths=(16, 32), hidden=32)


def _blob_data(seed=0, n_train=2000, n_test=500, size=8, levels=4):
  images, labels = data_lib.synthetic_images(np.random.default_rng(seed), n_train + n_test)
  x = data_lib.discretise(images, size, levels)
  empty = slice(n_train, n_train)
  return data_lib.DiscreteImages(x[:n_train], x[empty], x[n_train:], levels, "synthetic",
                                 labels[:n_train], labels[empty], labels[n_train:])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  data = _blob_data()
  cache = str(tmp_path_factory.mktemp("yardstick_cache"))
  return data, cache, yardstick.feature_classifier(data, cache, seed=0, **TINY)


# --- Fréchet distance ---------------------------------------------------------

def _diag_closed_form(m1, s1, m2, s2):
  return np.sum((m1 - m2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))


def test_frechet_distance_equals_closed_form():
  rng = np.random.default_rng(0)
  m1, m2 = rng.normal(size=6), rng.normal(size=6)
  s1, s2 = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
  want = _diag_closed_form(m1, s1, m2, s2)
  got = yardstick.frechet_distance_gaussians(m1, np.diag(s1), m2, np.diag(s2))
  np.testing.assert_allclose(got, want, rtol=1e-12)
  # Rotating both Gaussians by one orthogonal Q leaves W2 unchanged: a full-
  # covariance case whose answer is the diagonal closed form.
  q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
  rotated = yardstick.frechet_distance_gaussians(
      q @ m1, q @ np.diag(s1) @ q.T, q @ m2, q @ np.diag(s2) @ q.T)
  np.testing.assert_allclose(rotated, want, rtol=1e-10)
  # 1-D: (m1 - m2)^2 + (sd1 - sd2)^2.
  np.testing.assert_allclose(yardstick.frechet_distance_gaussians(
      [1.0], [[4.0]], [-2.0], [[9.0]]), 9.0 + 1.0, rtol=1e-12)


def test_frechet_distance_on_feature_sets():
  rng = np.random.default_rng(1)
  a = rng.normal(size=(400, 5)) @ rng.normal(size=(5, 5))
  b = rng.normal(size=(300, 5)) * 2 + 1
  assert yardstick.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
  ab, ba = yardstick.frechet_distance(a, b), yardstick.frechet_distance(b, a)
  np.testing.assert_allclose(ab, ba, rtol=1e-9)
  np.testing.assert_allclose(ab, yardstick.frechet_distance_gaussians(
      a.mean(0), np.cov(a.T), b.mean(0), np.cov(b.T)), rtol=1e-12)
  for seed in range(5):  # near-identical and rank-deficient sets stay >= 0
    r = np.random.default_rng(seed)
    x = r.normal(size=(50, 8))
    assert yardstick.frechet_distance(x, x + r.normal(size=x.shape) * 1e-9) >= 0.0
    assert yardstick.frechet_distance(x[:5], x[5:10]) >= 0.0


# --- precision and recall -------------------------------------------------------

MODES = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], np.float64)


def _modes(rng, n, which=(0, 1, 2, 3)):
  return MODES[rng.choice(list(which), n)] + rng.normal(size=(n, 2))


def test_knn_radii_against_brute_force():
  x = np.random.default_rng(2).normal(size=(60, 3))
  d2 = ((x[:, None] - x[None]) ** 2).sum(-1)
  for k in (1, 3):
    np.testing.assert_allclose(yardstick.knn_radii(x, k, chunk=7),
                               np.sort(d2, axis=1)[:, k], atol=1e-10)


def test_precision_recall_identical_sets_are_one():
  x = _modes(np.random.default_rng(3), 500)
  assert yardstick.precision_recall(x, x) == (1.0, 1.0)


def test_precision_drops_off_the_manifold():
  rng = np.random.default_rng(4)
  ref, samples = _modes(rng, 1000), _modes(rng, 1000)
  on, _ = yardstick.precision_recall(samples, ref)
  moved = samples.copy()
  moved[::2] += 100.0  # half the samples far from every reference point
  off, _ = yardstick.precision_recall(moved, ref)
  assert on > 0.9
  assert off == pytest.approx(on / 2, abs=0.05)


def test_recall_drops_when_samples_cover_half_the_modes():
  rng = np.random.default_rng(5)
  ref = _modes(rng, 1000)
  precision, recall = yardstick.precision_recall(_modes(rng, 1000, which=(0, 3)), ref)
  assert precision > 0.9
  assert recall == pytest.approx(0.5, abs=0.06)


# --- class shares ---------------------------------------------------------------

def test_class_shares_exact():
  out = yardstick.class_shares([0, 0, 1, 2], [0, 1, 1, 1], num_classes=4)
  assert out["class_shares"] == [0.5, 0.25, 0.25, 0.0]
  assert out["reference_class_shares"] == [0.25, 0.75, 0.0, 0.0]
  assert out["class_share_max_abs"] == pytest.approx(0.5)
  assert out["class_share_tv"] == pytest.approx(0.5)  # (.25 + .5 + .25) / 2


def test_class_shares_of_a_collapsed_sampler():
  ref = np.random.default_rng(6).integers(0, 10, 1000)
  q = np.bincount(ref, minlength=10) / len(ref)
  out = yardstick.class_shares(np.full(500, 7), ref, num_classes=10)
  assert out["class_share_tv"] == pytest.approx(1 - q[7])
  assert out["class_share_max_abs"] == pytest.approx(max(1 - q[7], np.delete(q, 7).max()))


# --- pixel-space nearest neighbours ---------------------------------------------

def test_nearest_neighbours_against_brute_force():
  rng = np.random.default_rng(7)
  train = rng.integers(0, 3, size=(200, 3, 3, 1)).astype(np.uint8)  # many ties
  samples = np.concatenate([train[[5, 17]], rng.integers(0, 3, size=(13, 3, 3, 1))])
  d2 = ((samples.reshape(15, 1, -1).astype(np.int64)
         - train.reshape(1, 200, -1)) ** 2).sum(-1)
  for k in (1, 4):
    idx, dist = yardstick.nearest_neighbours(samples, train, k, max_entries=600)
    # Brute force: by distance, ties to the lower index.
    want = np.array([np.lexsort((np.arange(200), row))[:k] for row in d2])
    np.testing.assert_array_equal(idx, want)
    np.testing.assert_allclose(dist, np.sqrt(np.take_along_axis(d2, want, 1)))
  idx, dist = yardstick.nearest_neighbours(samples, train, 1)
  assert idx[0, 0] == 5 and idx[1, 0] == 17 and dist[0, 0] == dist[1, 0] == 0.0


# --- the classifier and the floors ----------------------------------------------

def test_classifier_learns(trained):
  data, _, clf = trained
  majority = np.bincount(data.test_labels).max() / len(data.test_labels)
  print(f"tiny classifier: test accuracy {clf.test_accuracy:.3f} (majority "
        f"{majority:.3f}), trained in {clf.train_seconds:.1f} s")
  assert clf.test_accuracy > majority + 0.1
  feats, classes = clf.embed(data.test[:10])
  assert feats.shape == (10, 32) and feats.dtype == np.float64
  assert classes.shape == (10,) and set(classes) <= {0, 1, 2}


def test_floors_on_data_grow_on_a_corrupted_copy(trained):
  data, _, clf = trained
  floor = yardstick.floors(data, clf, n=500)
  assert floor["num_samples"] == floor["num_reference"] == 500
  ref = yardstick.reference(data, clf, n=500)
  rng = np.random.default_rng(8)
  test = data.test
  noisy = np.where(rng.random(test.shape) < 0.3, rng.integers(0, 4, test.shape), test)
  bad = yardstick.score_samples(noisy.astype(np.uint8), ref, clf)
  assert bad["fd"] > 5 * floor["fd"]
  assert bad["precision"] < floor["precision"] - 0.1
  assert bad["recall"] < floor["recall"] - 0.1
  assert bad["class_share_tv"] > floor["class_share_tv"]
  row = yardstick.columns(bad, floor)
  assert row["sample_fd"] == bad["fd"] and row["sample_fd_floor"] == floor["fd"]
  assert set(row) == {"sample_n"} | {f"sample_{k}{s}" for k in yardstick.SCALAR_KEYS
                                     for s in ("", "_floor")}


def test_collapsed_sampler_scores_one_minus_its_class_share(trained):
  data, _, clf = trained
  ref = yardstick.reference(data, clf, n=500)
  out = yardstick.score_samples(np.repeat(data.test[:1], 200, 0), ref, clf)
  c = int(clf.embed(data.test[:1])[1][0])
  assert out["class_share_tv"] == pytest.approx(1 - np.mean(ref.classes == c))
  assert out["recall"] < 0.05


def test_bad_samples_are_refused(trained):
  data, _, clf = trained
  ref = yardstick.reference(data, clf, n=50)
  with pytest.raises(UsageError, match="0..3"):
    yardstick.score_samples(data.test[:10] + 4, ref, clf)
  with pytest.raises(UsageError, match="integer levels"):
    yardstick.score_samples(data.test[:10, :4], ref, clf)


def test_classifier_is_deterministic_and_cached(trained, monkeypatch):
  data, cache, first = trained
  again = yardstick.feature_classifier(data, None, seed=0, **TINY)  # no cache: trains
  assert not again.from_cache and again.path is None
  assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)),
                                   first.params, again.params))
  assert again.fingerprint == first.fingerprint and os.path.exists(first.path)

  def no_training(*args, **kwargs):
    raise AssertionError("trained although the cache matched")

  monkeypatch.setattr(yardstick, "train_params", no_training)
  loaded = yardstick.feature_classifier(data, cache, seed=0, **TINY)
  assert loaded.from_cache and loaded.path == first.path
  assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)),
                                   first.params, loaded.params))
  assert loaded.test_accuracy == first.test_accuracy
  monkeypatch.undo()
  labels = data.train_labels.copy()
  labels[0] = (labels[0] + 1) % 3  # another dataset: another fingerprint, retrained
  other = yardstick.feature_classifier(
      data_lib.DiscreteImages(data.train, data.validation, data.test, 4, "synthetic",
                              labels, data.validation_labels, data.test_labels),
      cache, seed=0, **TINY)
  assert not other.from_cache and other.fingerprint != first.fingerprint
  assert other.path != first.path and os.path.exists(other.path)
