"""Chapter 2's subscription example: a tabular data set no linear model can fit.

Each row is a visitor of a website: a job title and the number of visits in the
last month. Whether they subscribe depends on the two *together*:

* ML engineers subscribe more the more often they visit (from ~2% to ~98%);
* everybody else subscribes *less* the more often they visit (they come for
  the free articles), from ~82% down to ~18%.

The two effects cancel exactly in the marginals: P(subscribe | job) = 1/2 for
every job, and P(subscribe | visits) = 1/2 for every number of visits. Neither
feature alone predicts anything, and (by the score equations of logistic
regression, which a constant logit solves) the best model that is linear in
the one-hot job and the visits is the constant 1/2: accuracy 1/2, NLL log 2.
The interaction is all there is to learn.

Construction: with p the share of ML engineers and d(v) a centred, increasing
function of the visits (mean 0 over the visits distribution),

    P(y=1 | ML engineer, v) = 1/2 + (1 - p) d(v)
    P(y=1 | other job,   v) = 1/2 - p d(v)

so that p (1/2 + (1-p) d) + (1-p) (1/2 - p d) = 1/2 at every v, and the mean
over v of either line is 1/2.

Features for the models, ``x`` [N, 6] float32: the one-hot job title (5) and
the visits scaled to [-1, 1].
"""

from typing import NamedTuple

import numpy as np

from genmodels.errors import UsageError

JOB_TITLES = ("ml_engineer", "data_scientist", "software_engineer",
              "product_manager", "designer")
JOB_SHARES = (0.4, 0.15, 0.15, 0.15, 0.15)
ML_ENGINEER = 0
MAX_VISITS = 30  # Visits are uniform over 0 .. MAX_VISITS.
AMPLITUDE = 0.8  # d(v) spans (-AMPLITUDE, AMPLITUDE).
STEEPNESS = 4.0  # Visits over which d(v) rises by tanh(1) of its amplitude.
NUM_FEATURES = len(JOB_TITLES) + 1

_SPLIT_STREAM = {"train": 0, "validation": 1, "test": 2}


class Subscriptions(NamedTuple):
  """Visitors: job [N] int32, visits [N] int32, label [N] int32 (1: subscribed),
  x [N, 6] float32 features, p_true [N] float32 the true P(subscribe)."""
  job: np.ndarray
  visits: np.ndarray
  label: np.ndarray
  x: np.ndarray
  p_true: np.ndarray

  def as_dict(self) -> dict[str, np.ndarray]:
    return {"x": self.x, "label": self.label}


def _d(visits):
  """The centred interaction strength d(v) (mean 0 over uniform 0..MAX_VISITS)."""
  centre = MAX_VISITS / 2  # The visits are symmetric about it, so E[d] = 0.
  return AMPLITUDE * np.tanh((np.asarray(visits, np.float64) - centre) / STEEPNESS)


def subscribe_probability(job, visits) -> np.ndarray:
  """The true P(subscribe | job, visits), float64 with the inputs' shape."""
  p = JOB_SHARES[ML_ENGINEER]
  d = _d(visits)
  return np.where(np.asarray(job) == ML_ENGINEER, 0.5 + (1 - p) * d, 0.5 - p * d)


def features(job, visits) -> np.ndarray:
  """[N, 6] float32: one-hot job title, then visits scaled to [-1, 1]."""
  job = np.asarray(job).reshape(-1)
  visits = np.asarray(visits, np.float32).reshape(-1)
  if job.shape != visits.shape:
    raise UsageError(f"job and visits must have the same size, got {job.size} "
                     f"and {visits.size}")
  if job.size and (job.min() < 0 or job.max() >= len(JOB_TITLES)):
    raise UsageError(f"job indices must be in 0..{len(JOB_TITLES) - 1}")
  onehot = np.eye(len(JOB_TITLES), dtype=np.float32)[job]
  scaled = 2.0 * visits / MAX_VISITS - 1.0
  return np.concatenate([onehot, scaled[:, None]], axis=1)


def sample(n: int, seed: int = 0, split: str = "train") -> Subscriptions:
  """n visitors drawn from (seed, split)."""
  if n <= 0:
    raise UsageError(f"number of visitors must be positive, got {n}")
  if split not in _SPLIT_STREAM:
    raise UsageError(f"unknown split {split!r}; valid: {', '.join(_SPLIT_STREAM)}")
  rng = np.random.default_rng([seed, _SPLIT_STREAM[split]])
  job = rng.choice(len(JOB_TITLES), size=n, p=JOB_SHARES).astype(np.int32)
  visits = rng.integers(0, MAX_VISITS + 1, size=n).astype(np.int32)
  p_true = subscribe_probability(job, visits)
  label = (rng.uniform(size=n) < p_true).astype(np.int32)
  return Subscriptions(job=job, visits=visits, label=label,
                       x=features(job, visits), p_true=p_true.astype(np.float32))


def load(num_train: int, num_test: int, seed: int = 0
         ) -> tuple[Subscriptions, Subscriptions]:
  """(train, test); the test set depends only on (seed, num_test)."""
  return sample(num_train, seed, "train"), sample(num_test, seed, "test")


def bayes_metrics(data: Subscriptions) -> dict[str, float]:
  """Accuracy and NLL (nats) of the true probabilities: the best any model can do."""
  p = data.p_true.astype(np.float64)
  y = data.label
  nll = -np.mean(np.where(y == 1, np.log(p), np.log1p(-p)))
  return {"accuracy": float(np.mean((p > 0.5) == (y == 1))), "nll": float(nll)}


def marginal_rates(data: Subscriptions) -> dict[str, float]:
  """Subscription rates by one feature at a time: all close to the base rate."""
  high = data.visits > MAX_VISITS / 2
  ml = data.job == ML_ENGINEER
  return {
      "base_rate": float(data.label.mean()),
      "ml_engineer": float(data.label[ml].mean()),
      "other_jobs": float(data.label[~ml].mean()),
      "many_visits": float(data.label[high].mean()),
      "few_visits": float(data.label[~high].mean()),
      "ml_engineer_and_many_visits": float(data.label[ml & high].mean()),
  }
