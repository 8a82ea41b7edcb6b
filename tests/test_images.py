"""Tests for genmodels.data.images (no network, no TensorFlow)."""

import gzip
import os
import shutil
import socket
import time

import numpy as np
import pytest
import requests
import tensorflow_datasets as tfds

from genmodels.data import images
from genmodels.data.images import DatasetUnavailableError, load_image_dataset, read_idx

FASHION_DIR = images.DEFAULT_FASHION_MNIST_DIR
_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D}


def idx_bytes(array: np.ndarray) -> bytes:
  """The IDX encoding of `array`: magic, big-endian dims, big-endian data."""
  header = bytes([0, 0, _CODES[array.dtype.type], array.ndim])
  dims = np.asarray(array.shape, ">u4").tobytes()
  return header + dims + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path, data: bytes, gz=True):
  path.write_bytes(gzip.compress(data) if gz else data)
  return path


def fake_fashion_dir(folder, n_train=50, n_test=20, seed=0):
  """A manual dir with the 4 Fashion-MNIST files; returns the arrays written."""
  rng = np.random.default_rng(seed)
  folder.mkdir(parents=True, exist_ok=True)
  arrays = {}
  for prefix, n in (("train", n_train), ("t10k", n_test)):
    x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, n).astype(np.uint8)
    write(folder / f"{prefix}-images-idx3-ubyte.gz", idx_bytes(x))
    write(folder / f"{prefix}-labels-idx1-ubyte.gz", idx_bytes(y))
    arrays[prefix] = (x, y)
  return arrays


# ------------------------------------------------------------------- IDX

@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_read_idx_roundtrip(tmp_path, gz, dtype):
  a = np.arange(2 * 3 * 5) * 37 - (0 if dtype == np.uint8 else 500)
  a = (a % 256 if dtype == np.uint8 else a).reshape(2, 3, 5).astype(dtype)
  out = read_idx(write(tmp_path / "a.idx", idx_bytes(a), gz=gz))
  assert out.dtype == dtype and out.dtype.isnative
  np.testing.assert_array_equal(out, a)


def _good():
  return idx_bytes(np.zeros((4, 28, 28), np.uint8))


@pytest.mark.parametrize("data, gz, message", [
    (b"\x00\x00\x07\x03" + _good()[4:], True, "bad IDX magic number 00000703"),
    (b"\x08\x03\x00\x00" + _good()[4:], True, "bad IDX magic number 08030000"),
    (b"", True, "bad IDX magic number empty file"),
    (_good()[:-10], True, "truncated: 3126 data bytes"),
    (_good()[:9], True, "truncated IDX header"),
    (_good() + b"\0", True, "has trailing bytes"),
    (gzip.compress(_good())[:-20], False, "corrupt or truncated gzip"),
], ids=["magic", "swapped-magic", "empty", "truncated", "truncated-header", "trailing", "bad-gzip"])
def test_read_idx_errors(tmp_path, data, gz, message):
  path = write(tmp_path / "bad-ubyte.gz", data, gz=gz)
  with pytest.raises(ValueError, match=message) as e:
    read_idx(path)
  assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_read_idx_missing(tmp_path):
  with pytest.raises(ValueError, match=f"IDX file not found: {tmp_path}/nope.gz; point manual_dir"):
    read_idx(tmp_path / "nope.gz")


# ------------------------------------------------- fashion_mnist_offline

def test_offline_builder_reads_back_exact_arrays(tmp_path):
  arrays = fake_fashion_dir(tmp_path / "manual")
  for split, prefix in (("train", "train"), ("test", "t10k")):
    data = load_image_dataset("fashion_mnist_offline", split, data_dir=str(tmp_path / "tfds"),
                              manual_dir=str(tmp_path / "manual"))
    x, y = arrays[prefix]
    assert data.images.dtype == np.uint8 and data.labels.dtype == np.int32
    np.testing.assert_array_equal(data.images, x[..., None])  # file order is kept
    np.testing.assert_array_equal(data.labels, y)
    assert data.num_classes == 10 and data.class_names == images.FASHION_MNIST_CLASSES
  assert (tmp_path / "tfds/fashion_mnist_offline/1.0.0/dataset_info.json").exists()


def test_offline_builder_mismatched_counts(tmp_path):
  fake_fashion_dir(tmp_path)
  write(tmp_path / "t10k-labels-idx1-ubyte.gz", idx_bytes(np.zeros(19, np.uint8)))
  with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz holds .19,. labels but .*t10k-images"):
    load_image_dataset("fashion_mnist_offline", "test", data_dir=str(tmp_path / "tfds"),
                       manual_dir=str(tmp_path))


def test_offline_builder_missing_file(tmp_path):
  fake_fashion_dir(tmp_path)
  os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
  with pytest.raises(ValueError, match="Fashion-MNIST file not found: .*t10k-labels-idx1-ubyte.gz; "
                                       "install the Debian package dataset-fashion-mnist or pass manual_dir"):
    load_image_dataset("fashion_mnist_offline", "train", data_dir=str(tmp_path / "tfds"),
                       manual_dir=str(tmp_path))
  assert not tfds.builder("fashion_mnist_offline", data_dir=str(tmp_path / "tfds")).is_prepared()


def test_manual_dir_not_a_folder(tmp_path):
  with pytest.raises(ValueError, match="manual_dir .*/absent for 'fashion_mnist_offline' is not a folder"):
    load_image_dataset("fashion_mnist_offline", "train", data_dir=str(tmp_path),
                       manual_dir=str(tmp_path / "absent"))


@pytest.mark.skipif(not os.path.exists(f"{FASHION_DIR}/train-images-idx3-ubyte.gz"),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist(tmp_path):
  start = time.perf_counter()
  test = load_image_dataset("fashion_mnist_offline", "test", data_dir=str(tmp_path))
  print(f"prepared 70k Fashion-MNIST + read 10k in {time.perf_counter() - start:.1f}s")
  assert test.images.shape == (10_000, 28, 28, 1) and test.labels.shape == (10_000,)
  assert test.labels.min() == 0 and test.labels.max() == 9
  assert np.bincount(test.labels).tolist() == [1000] * 10  # Fashion-MNIST's test set is balanced
  builder = tfds.builder("fashion_mnist_offline", data_dir=str(tmp_path))
  assert builder.info.splits["train"].num_examples == 60_000
  head = load_image_dataset("fashion_mnist_offline", "train[:500]", data_dir=str(tmp_path))
  np.testing.assert_array_equal(head.images[..., 0], read_idx(f"{FASHION_DIR}/train-images-idx3-ubyte.gz")[:500])
  # limit reads the first examples only; beyond the split's size it keeps them all.
  first = load_image_dataset("fashion_mnist_offline", "train", data_dir=str(tmp_path), limit=500)
  np.testing.assert_array_equal(first.images, head.images)
  np.testing.assert_array_equal(first.labels, head.labels)
  whole = load_image_dataset("fashion_mnist_offline", "test", data_dir=str(tmp_path), limit=20_000)
  np.testing.assert_array_equal(whole.images, test.images)


# ------------------------------------------------- the real tfds path

def test_cifar10_through_tfds_data_source(tmp_path, monkeypatch):
  monkeypatch.setattr(images, "_offline_reason", lambda builder: None)  # pretend online
  with tfds.testing.mock_data(num_examples=6):
    data = load_image_dataset("cifar10", "train", data_dir=str(tmp_path))
  assert data.images.shape == (6, 32, 32, 3) and data.images.dtype == np.uint8
  assert data.labels.shape == (6,) and data.labels.dtype == np.int32
  assert ((0 <= data.labels) & (data.labels < 10)).all()
  # Mocked from code: cifar10 reads its class names from the archive, so "0".."9" here.
  assert data.num_classes == 10 and len(data.class_names) == 10


def _assert_clear(error: DatasetUnavailableError):
  message = str(error)
  assert "\n" not in message
  assert "'cifar10' is not prepared" in message and "--dataset=fashion_mnist_offline" in message


def test_cifar10_offline_fails_fast(tmp_path, monkeypatch):
  def no_network(*args, **kwargs):
    raise OSError("[Errno -2] Name or service not known")
  monkeypatch.setattr(socket, "create_connection", no_network)
  start = time.perf_counter()
  with pytest.raises(DatasetUnavailableError, match="cannot reach www.cs.toronto.edu") as e:
    load_image_dataset("cifar10", "train", data_dir=str(tmp_path))
  _assert_clear(e.value)
  assert time.perf_counter() - start < 10
  assert isinstance(e.value, ValueError)


def test_cifar10_failed_download(tmp_path, monkeypatch):
  """Host reachable, download fails: tfds' error becomes DatasetUnavailableError."""
  from tensorflow_datasets.core.download import downloader
  from tensorflow_datasets.core.utils import gcs_utils

  def refuse(url, **kwargs):
    raise requests.exceptions.ConnectionError(f"refused: {url}")
  monkeypatch.setattr(images, "_offline_reason", lambda builder: None)
  monkeypatch.setattr(gcs_utils, "_is_gcs_disabled", True)
  monkeypatch.setattr(downloader, "_open_url", refuse)
  with pytest.raises(DatasetUnavailableError, match="download failed: ConnectionError") as e:
    load_image_dataset("cifar10", "train", data_dir=str(tmp_path))
  _assert_clear(e.value)


# ------------------------------------------------------ concurrent preparation

def _prepare_and_load(data_dir, manual_dir, barrier):
  barrier.wait()  # every process asks for the unprepared dataset at once
  data = load_image_dataset("fashion_mnist_offline", "train", data_dir=data_dir,
                            manual_dir=manual_dir)
  return data.images.tobytes(), data.labels.tobytes()


def test_concurrent_preparation_of_one_fresh_data_dir(tmp_path):
  """Four processes prepare the same fresh data_dir at once: none fails, all agree."""
  import concurrent.futures
  import multiprocessing
  arrays = fake_fashion_dir(tmp_path / "manual", n_train=300, n_test=40)
  data_dir = str(tmp_path / "tfds")
  ctx = multiprocessing.get_context("spawn")
  n = 4
  with ctx.Manager() as manager:
    barrier = manager.Barrier(n)
    with concurrent.futures.ProcessPoolExecutor(n, mp_context=ctx) as pool:
      futures = [pool.submit(_prepare_and_load, data_dir, str(tmp_path / "manual"),
                             barrier) for _ in range(n)]
      outputs = [f.result(timeout=300) for f in futures]
  x, y = arrays["train"]
  for images_bytes, labels_bytes in outputs:
    assert images_bytes == x[..., None].tobytes()
    assert labels_bytes == y.astype(np.int32).tobytes()
  # One prepared version folder and no incomplete leftovers.
  entries = sorted(os.listdir(os.path.join(data_dir, "fashion_mnist_offline")))
  assert entries == ["1.0.0"], entries


def test_unpreparable_offline_dataset_names_the_real_cause(tmp_path):
  blocker = tmp_path / "not_a_dir"
  blocker.write_text("a file where the data_dir should be")
  fake_fashion_dir(tmp_path / "manual")
  with pytest.raises(DatasetUnavailableError) as info:
    load_image_dataset("fashion_mnist_offline", "train", data_dir=str(blocker),
                       manual_dir=str(tmp_path / "manual"))
  msg = str(info.value)
  assert "cannot create the data_dir" in msg
  assert "--dataset=fashion_mnist_offline" not in msg  # never "pass what you passed"


def test_a_prepared_dataset_refuses_a_manual_dir_with_other_files(tmp_path):
  """Prepared from folder A, then asked for with folder B's different files:
  refused with the fix, not answered silently with A's data; the same files in
  another folder are the same data and load."""
  data_dir = str(tmp_path / "tfds")
  arrays = fake_fashion_dir(tmp_path / "a", seed=0)
  fake_fashion_dir(tmp_path / "b", seed=1)
  load_image_dataset("fashion_mnist_offline", "test", data_dir=data_dir,
                     manual_dir=str(tmp_path / "a"))
  with pytest.raises(ValueError, match=r"was prepared from .*a, whose files differ "
                     r"from those in manual_dir .*b: delete"):
    load_image_dataset("fashion_mnist_offline", "test", data_dir=data_dir,
                       manual_dir=str(tmp_path / "b"))
  shutil.copytree(tmp_path / "a", tmp_path / "copy")
  same = load_image_dataset("fashion_mnist_offline", "test", data_dir=data_dir,
                            manual_dir=str(tmp_path / "copy"))
  np.testing.assert_array_equal(same.images[..., 0], arrays["t10k"][0])
