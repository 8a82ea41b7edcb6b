"""What a benchmark run can ask for: the models, the case, the quick set, the run.

Plain data, no JAX: the flags (``options``) are checked against these names
before anything heavy is imported, and ``cases`` builds each case's task.
"""

from __future__ import annotations

import dataclasses

from genmodels.errors import UsageError

# cnn: the book CNN with lax.conv; cnn_im2col: the same CNN with
# conv_impl="im2col" (classify's default); cnn_fast: the fast recipe's model.
CLASSIFIER_MODELS = ("mlp", "cnn", "cnn_im2col", "cnn_fast")
DENSITY_MODELS = ("gmm", "realnvp", "spline_flow")
MODELS = CLASSIFIER_MODELS + DENSITY_MODELS
# The dtypes a classifier case computes in (the matmul reference measures both);
# the density models compute in float32 only.
DTYPES = ("float32", "bfloat16")
CONV_IMPLS = ("xla", "im2col")  # genmodels.networks.classifiers.CONV_IMPLS

QUICK_CASES = [  # (model, input, batch, dtype, steps per dispatch)
    ("mlp", "28x28x1", 32, "float32", 1),
    ("mlp", "28x28x1", 32, "float32", 25),
    ("mlp", "28x28x1", 32, "bfloat16", 25),
    ("cnn", "32x32x3", 32, "float32", 0),
    ("cnn", "32x32x3", 32, "float32", 1),
    ("cnn_im2col", "32x32x3", 32, "float32", 1),
    ("cnn_im2col", "32x32x3", 32, "float32", 25),
    ("cnn_im2col", "32x32x3", 32, "bfloat16", 25),
    ("cnn", "28x28x1", 32, "float32", 1),
    ("cnn_im2col", "28x28x1", 32, "float32", 25),
    ("realnvp", None, 1024, "float32", 10),
    ("spline_flow", None, 1024, "float32", 10),
]
QUICK_SCALING_MODELS = ("mlp", "realnvp")
QUICK_NUM_DEVICES = (1, 2, 4, 8)


@dataclasses.dataclass(frozen=True)
class Case:
  model: str
  input_shape: tuple[int, ...] | None  # images HxWxC; None: 2-D points
  batch_size: int  # global
  dtype: str = "float32"
  steps_per_dispatch: int = 1  # 0: make_train_step without lax.scan
  num_devices: int = 1

  @property
  def name(self) -> str:
    shape = "x".join(map(str, self.input_shape)) if self.input_shape else "2-D points"
    return (f"{self.model} {shape} b{self.batch_size} {self.dtype} "
            f"k{self.steps_per_dispatch} d{self.num_devices}")

  @property
  def classifier(self) -> bool:
    return self.model in CLASSIFIER_MODELS


@dataclasses.dataclass(frozen=True)
class Request:
  """A whole run, as ``cli.request`` checked it from the flags: ``runner.run`` runs it."""
  quick: bool
  cases: tuple[Case, ...]
  scaling_models: tuple[str, ...]
  num_devices: tuple[int, ...]
  cpu_scaling_devices: int
  out: str  # absolute
  tag: str | None
  repeats: int
  window_seconds: float
  matmul_size: int | None
  epoch: bool
  epoch_num_train: int
  epoch_conv_impl: str
  profile: bool
  convergence: tuple[str, ...]
  convergence_kl: float
  convergence_eval_every: int
  scaling_worker: str | None


def parse_shape(text: str | None) -> tuple[int, ...] | None:
  """'32x32x3' -> (32, 32, 3); None or '' -> None (2-D points).

  Anything but three positive integers joined by 'x' is a UsageError.
  """
  if not text:
    return None
  parts = text.lower().split("x")
  if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
    raise UsageError(f"bad image shape {text!r}: give HxWxC, three positive "
                     "integers such as 32x32x3")
  return tuple(int(p) for p in parts)


def quick_cases() -> list[Case]:
  return [Case(m, parse_shape(s), b, d, k) for m, s, b, d, k in QUICK_CASES]


def check_model(model: str) -> None:
  if model not in MODELS:
    raise UsageError(f"unknown model {model!r}; valid: {', '.join(MODELS)}")
