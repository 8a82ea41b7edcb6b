"""Image-classification datasets through tensorflow-datasets, without TensorFlow.

`load_image_dataset(name, split)` reads a whole split into memory as uint8
numpy arrays (the training engine gathers and shuffles batches on device).

* Any tfds image-classification dataset (`cifar10`, `mnist`, ...) takes the
  real tfds path: `tfds.data_source(..., download=True)` with array_record files.
  Offline, that fails with a one-line `DatasetUnavailableError`.
* `fashion_mnist_offline` is a tfds builder (registered on import) that reads
  the Fashion-MNIST IDX files from a local folder: by default the Debian package
  `dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist), or `manual_dir`.

Prepared data lands in `data_dir`, by default tfds' own: `$TFDS_DATA_DIR` or
`~/tensorflow_datasets`. A prepared offline dataset remembers the files it
was prepared from (`source.json`: names, sizes, SHA-256); a later
`manual_dir` with other files is refused with the fix, never silently
answered with the old data.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.resources
import json
import os
import re
import socket
import sys
import urllib.parse
import zlib

import numpy as np

try:  # tfds 4.9.10 imports this backport lazily but does not declare it on py>=3.9.
  import importlib_resources  # noqa: F401
except ImportError:
  sys.modules.setdefault("importlib_resources", importlib.resources)

import tensorflow_datasets as tfds  # noqa: E402

from genmodels.errors import UsageError
from genmodels import locking  # noqa: E402

DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_OFFLINE_HINT = ("use --dataset=fashion_mnist_offline (reads the Debian "
                 "dataset-fashion-mnist files, or --manual_dir)")


class DatasetUnavailableError(UsageError):
  """A dataset is neither prepared locally nor downloadable."""


@dataclasses.dataclass(frozen=True)
class ImageData:
  """A whole split in memory: `images` uint8 [N,H,W,C], `labels` int32 [N]."""
  images: np.ndarray
  labels: np.ndarray
  num_classes: int
  class_names: tuple[str, ...]


# ---------------------------------------------------------------- IDX files

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4",
               0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Parses an IDX file (gzipped or not) into a native-endian numpy array.

  Raises a one-line `ValueError` naming the file for a missing, corrupt,
  truncated or over-long file, or a wrong magic number.
  """
  path = os.fspath(path)
  fix = "point manual_dir at a folder with intact IDX files"
  try:
    with open(path, "rb") as f:
      raw = f.read()
    if raw[:2] == b"\x1f\x8b":
      raw = gzip.decompress(raw)
  except FileNotFoundError:
    raise UsageError(f"IDX file not found: {path}; {fix}") from None
  except (EOFError, gzip.BadGzipFile, zlib.error) as e:
    raise UsageError(f"corrupt or truncated gzip in {path} ({e}); {fix}") from None
  if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES:
    magic = raw[:4].hex() or "empty file"
    raise UsageError(f"bad IDX magic number {magic} in {path}; {fix}")
  ndim, header = raw[3], 4 + 4 * raw[3]
  if len(raw) < header:
    raise UsageError(f"truncated IDX header in {path}; {fix}")
  shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
  dtype = np.dtype(_IDX_DTYPES[raw[2]])
  expected, got = int(np.prod(shape)) * dtype.itemsize, len(raw) - header
  if got != expected:
    what = "truncated" if got < expected else "has trailing bytes"
    raise UsageError(f"IDX file {path} {what}: {got} data bytes, shape "
                     f"{shape} needs {expected}; {fix}")
  return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def fashion_mnist_paths(folder: str | os.PathLike, prefix: str) -> list[str]:
  """The images and labels files of split `prefix` ('train' or 't10k'); checks they exist."""
  paths = [os.path.join(folder, f"{prefix}-{kind}-ubyte.gz")
           for kind in ("images-idx3", "labels-idx1")]
  for p in paths:
    if not os.path.exists(p):
      raise UsageError(f"Fashion-MNIST file not found: {p}; install the Debian "
                       "package dataset-fashion-mnist or pass manual_dir=<folder "
                       "with the 4 *-ubyte.gz files>")
  return paths


def read_fashion_mnist(folder: str | os.PathLike, prefix: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads `{prefix}-images-idx3-ubyte.gz` and labels: uint8 [N,28,28,1], int64 [N]."""
  paths = fashion_mnist_paths(folder, prefix)
  images, labels = read_idx(paths[0]), read_idx(paths[1])
  if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
    raise UsageError(f"{paths[0]}: expected uint8 [N,28,28] images, got "
                     f"{images.dtype} {images.shape}; {paths[0]} is not Fashion-MNIST")
  if labels.ndim != 1 or len(labels) != len(images):
    raise UsageError(f"{paths[1]} holds {labels.shape} labels but {paths[0]} "
                     f"holds {len(images)} images; use matching IDX files")
  if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
    raise UsageError(f"{paths[1]}: label {labels.max()} out of range [0, 10)")
  return images[..., None], labels.astype(np.int64)


# ----------------------------------------------------- offline tfds builder

class FashionMnistOffline(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST from local IDX files; examples keep the files' order."""

  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
      "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz in manual_dir "
      f"(apt-get install dataset-fashion-mnist puts them in {DEFAULT_FASHION_MNIST_DIR}).")

  def __init__(self, *, file_format="array_record", **kwargs):
    """Defaults to array_record, the random-access format `tfds.data_source` reads."""
    super().__init__(file_format=file_format, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            # BYTES: one bytes field per image, ~5x faster to write than int64s.
            "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8,
                                          encoding=tfds.features.Encoding.BYTES),
            "label": tfds.features.ClassLabel(names=FASHION_MNIST_CLASSES),
        }),
        supervised_keys=("image", "label"),
        disable_shuffling=True,
        homepage="https://github.com/zalandoresearch/fashion-mnist",
    )

  def _split_generators(self, dl_manager):
    folder = dl_manager.manual_dir
    for prefix in ("train", "t10k"):  # all four files, before writing anything
      fashion_mnist_paths(folder, prefix)
    return {"train": self._generate_examples(folder, "train"),
            "test": self._generate_examples(folder, "t10k")}

  def _generate_examples(self, folder, prefix):
    images, labels = read_fashion_mnist(folder, prefix)
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": image, "label": label}


OFFLINE_DATASETS = {"fashion_mnist_offline": DEFAULT_FASHION_MNIST_DIR}


# ------------------------------------------------------------------ loading

def _offline_reason(builder: tfds.core.DatasetBuilder) -> str | None:
  """Why `builder`'s source files cannot be downloaded now, or None.

  tfds retries failed downloads for minutes; a short connect to each source host
  first turns "offline" into an immediate error.
  """
  for url in builder.url_infos or {}:
    parsed = urllib.parse.urlparse(url)
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
      socket.create_connection((parsed.hostname, port), timeout=5).close()
    except OSError as e:
      return f"cannot reach {parsed.hostname}: {e}"
  return None


def _unavailable(name, data_dir, reason) -> DatasetUnavailableError:
  where = data_dir or "the tfds data_dir"
  hint = ("check the files in manual_dir (default "
          f"{DEFAULT_FASHION_MNIST_DIR}) and that data_dir is writable"
          if name in OFFLINE_DATASETS else _OFFLINE_HINT)
  return DatasetUnavailableError(
      f"dataset {name!r} is not prepared in {where} and cannot be prepared here "
      f"({reason}); {hint}")


SOURCE_FILE = "source.json"


def source_fingerprint(folder: str) -> dict[str, list]:
  """{file name: [size, sha256]} of the dataset files in ``folder`` (sorted)."""
  out = {}
  for entry in sorted(os.listdir(folder)):
    path = os.path.join(folder, entry)
    if not entry.endswith(".gz") or not os.path.isfile(path):
      continue
    digest = hashlib.sha256()
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
    out[entry] = [os.path.getsize(path), digest.hexdigest()]
  return out


def _check_source(builder, name: str, manual_dir: str | None) -> None:
  """Refuses a prepared offline dataset whose source files differ from ``manual_dir``'s."""
  if name not in OFFLINE_DATASETS or manual_dir is None:
    return
  path = os.path.join(builder.data_dir, SOURCE_FILE)
  if not os.path.exists(path):  # prepared before sources were recorded
    return
  with open(path) as f:
    recorded = json.load(f)
  if recorded.get("files") != source_fingerprint(manual_dir):
    raise UsageError(
        f"dataset {name!r} in {builder.data_dir} was prepared from "
        f"{recorded.get('manual_dir')}, whose files differ from those in manual_dir "
        f"{manual_dir}: delete {builder.data_dir} to prepare it again from "
        f"{manual_dir}, or pass another data_dir")


def _record_source(builder, name: str, manual_dir: str | None) -> None:
  if name in OFFLINE_DATASETS and manual_dir is not None:
    with open(os.path.join(builder.data_dir, SOURCE_FILE), "w") as f:
      json.dump({"manual_dir": os.path.abspath(manual_dir),
                 "files": source_fingerprint(manual_dir)}, f, indent=1)


def prepare(name: str, data_dir: str | None = None,
            manual_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """Prepares dataset ``name`` in ``data_dir`` once, safely across processes.

  Any number of processes (test workers, the processes of a multi-process run,
  two users' runs) may ask at once: an exclusive lock file beside the dataset
  lets one of them prepare it while the others wait, then find it prepared.
  The kernel drops the lock of a process that dies, so a crash blocks nobody.
  """
  builder = tfds.builder(name, data_dir=data_dir)
  if builder.is_prepared():
    _check_source(builder, name, manual_dir)
    return builder
  root = builder.data_dir_root
  try:
    os.makedirs(root, exist_ok=True)
  except OSError as e:
    raise _unavailable(name, root, f"cannot create the data_dir: "
                       f"{e.strerror or e}") from e
  lock_name = f".{re.sub(r'[^A-Za-z0-9_.-]', '_', builder.name)}.prepare.lock"
  with locking.exclusive(os.path.join(root, lock_name)):
    builder = tfds.builder(name, data_dir=data_dir)  # another may have finished
    if builder.is_prepared():
      _check_source(builder, name, manual_dir)
      return builder
    if reason := _offline_reason(builder):
      raise _unavailable(name, data_dir, reason)
    config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    try:
      builder.download_and_prepare(download_config=config)
    except ModuleNotFoundError as e:
      if e.name != "tensorflow":
        raise
      raise _unavailable(name, data_dir, "tfds needs TensorFlow to encode its "
                         "images, and TensorFlow is not installed") from e
    except OSError as e:  # requests' ConnectionError, a full disk, ...
      what = "preparation failed" if name in OFFLINE_DATASETS else "download failed"
      raise _unavailable(name, data_dir, f"{what}: {type(e).__name__}: "
                         f"{' '.join(str(e).split())[:200]}") from e
    _record_source(builder, name, manual_dir)
  return builder


def _read_all(source) -> list:
  """Every example of a tfds data source, in order."""
  keys = list(range(len(source)))
  try:  # batched reads: ~5x faster than one `source[i]` at a time
    return source.__getitems__(keys)
  except TypeError:  # tfds.testing.mock_data's mock lacks a working __getitems__
    return [source[i] for i in keys]


def load_image_dataset(name: str, split: str, data_dir: str | None = None,
                       manual_dir: str | None = None, limit: int = 0) -> ImageData:
  """Loads a tfds image-classification split (e.g. 'train', 'test[:10%]') into memory.

  Prepares the dataset in `data_dir` on first use (downloading it, or for
  `fashion_mnist_offline` reading `manual_dir`), then reads it back through
  `tfds.data_source`. ``limit`` > 0 keeps the split's first ``limit`` examples
  (all of them if it has fewer), reading and decoding only those.
  """
  if manual_dir is None:
    manual_dir = OFFLINE_DATASETS.get(name)
  if manual_dir is not None and not os.path.isdir(manual_dir):
    raise UsageError(f"manual_dir {manual_dir} for {name!r} is not a folder; "
                     "pass the folder that holds the dataset files")
  builder = prepare(name, data_dir, manual_dir)
  if limit and "[" not in split and limit < builder.info.splits[split].num_examples:
    split = f"{split}[:{int(limit)}]"
  source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)

  features = source.dataset_info.features
  image_key, label_key = source.dataset_info.supervised_keys or ("image", "label")
  examples = _read_all(source)
  images = np.stack([np.asarray(ex[image_key], np.uint8) for ex in examples])
  labels = np.array([ex[label_key] for ex in examples], np.int32)
  label = features[label_key]
  return ImageData(images, labels, label.num_classes, tuple(label.names))
