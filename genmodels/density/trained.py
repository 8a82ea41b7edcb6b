"""Trained density models on (longitude, latitude): score, sample, save, load.

Each model of a density workdir lives in ``workdir/models/NAME/`` with its
``model.json`` (name and module fields) and final ``params`` (Orbax);
``load_density`` gives it back for anyone to score their own points.
"""

import functools
import json
import operator
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from genmodels.errors import UsageError
from genmodels import models


init_variables = models.init_variables  # the loss's view of a model's variables


class TrainedDensity:
  """A trained density model on (longitude, latitude) points in degrees.

  An implicit model (a GAN: ``has_density`` is False) samples but has no
  ``log_prob``. Constants of the parameters (an energy model's log Z) are
  computed once per ``params`` object: to score other parameters, assign a
  new ``params`` rather than editing its arrays in place.

  ``sample`` draws at most ``MAX_SAMPLES`` points per call (10^8 points of 2
  float32 coordinates are 800 MB, before the model's own working memory): a
  larger n is refused before anything is allocated, since an allocation that
  fails inside XLA aborts the whole process (a notebook's kernel with it).
  """
  MAX_SAMPLES = 10**8

  def __init__(self, name: str, model, params):
    self.name, self.model, self.params = name, model, params
    self.has_density = model.has_density
    self._log_prob = jax.jit(lambda v, x: model.apply(v, x, method="log_prob"))
    self._prepare = jax.jit(functools.partial(models.with_normalizers, model))
    self._variables, self._variables_of = None, None  # params + cached normalizers
    self._sample = jax.jit(lambda p, k, n: model.apply({"params": p}, k, n,
                                                       method="sample"),
                           static_argnums=2)

  def log_prob(self, x) -> np.ndarray:
    """log p(x) for points [N, 2] or a single point [2]; -inf where p is 0."""
    if not self.has_density:
      raise UsageError(f"{self.name!r} is an implicit model: it has samples but no "
                       "log_prob; score it with genmodels.density.yardstick.score_samples")
    x = np.asarray(x, dtype=np.float32)
    given = tuple(x.shape)  # the shape the caller passed, for the message
    single = x.ndim == 1
    x = x[None] if single else x
    if x.ndim != 2 or x.shape[-1] != 2:
      raise UsageError(f"points must have shape [N, 2] (or [2] for one point) as "
                       f"(longitude, latitude) in degrees, got {given}")
    if self._variables_of is not self.params:  # once per parameters: e.g. log Z
      self._variables = self._prepare({"params": self.params})
      self._variables_of = self.params
    out = np.asarray(self._log_prob(self._variables, jnp.asarray(x)))
    return out[0] if single else out

  def sample(self, key: jax.Array, n: int) -> np.ndarray:
    """n points [n, 2] in degrees; n an integer in [1, MAX_SAMPLES]."""
    n = sample_count(n, self.MAX_SAMPLES, "points", "TrainedDensity")
    return np.asarray(self._sample(self.params, key, n))

  def diagnostics(self, x) -> dict[str, float]:
    """The model's own checks on points x (``diagnostics``), or {}."""
    out = self.model.apply({"params": self.params}, jnp.asarray(x, jnp.float32),
                           method="diagnostics")
    return {k: float(v) for k, v in out.items()}


def sample_count(n, limit: int, what: str, owner: str) -> int:
  """n as an int in [1, limit], or the one-line error (a bool or 2.5 is not a count)."""
  try:
    if isinstance(n, bool):
      raise TypeError
    n = operator.index(n)
  except TypeError:
    raise UsageError(f"n must be an integer number of {what}, got {n!r}") from None
  if not 1 <= n <= limit:
    raise UsageError(f"n must be between 1 and {limit:,} ({owner}.MAX_SAMPLES) per "
                     f"call, got {n:,}: draw larger sets in several calls with "
                     "different keys")
  return n


def save(model_dir: str, name: str, model_fields: dict, params) -> None:
  with open(os.path.join(model_dir, "model.json"), "w") as f:
    json.dump({"name": name, "model": model_fields}, f, indent=2)
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.join(os.path.abspath(model_dir), "params"), params, force=True)
  ckptr.wait_until_finished()


def load_density(workdir: str, name: str | None = None) -> TrainedDensity:
  """A trained model from a density workdir: ``name``, or the best one.

  The best is the lowest validation NLL in ``results.json``.
  """
  if name is None:
    results_path = os.path.join(workdir, "results.json")
    if not os.path.exists(results_path):
      raise UsageError(f"no results.json in {workdir}: run "
                              f"experiments/density_mle.py --workdir={workdir} first")
    try:
      with open(results_path) as f:
        results = json.load(f)
    except (OSError, ValueError) as e:
      raise UsageError(f"cannot read {results_path} ({e}): run "
                       f"experiments/density_mle.py --workdir={workdir} again") from None
    rows = results.get("models") if isinstance(results, dict) else None
    if not isinstance(rows, dict) or not all(isinstance(r, dict) for r in rows.values()):
      keys = ", ".join(sorted(results)[:8]) if isinstance(results, dict) else "no fields"
      raise UsageError(
          f"{workdir} is not a density workdir: its results.json has no models' rows "
          f"(it holds {keys or 'nothing'}: another experiment's results): pass the "
          f"--workdir of an experiments/density_mle.py run")
    explicit = [n for n in rows if rows[n].get("validation_nll") is not None]
    if not explicit:
      if not rows:
        raise UsageError(f"{workdir} holds no trained model yet: run experiments/"
                         f"density_mle.py --workdir={workdir} to the end first")
      raise UsageError(
          f"{workdir} holds only models without a density ({', '.join(rows)}: they "
          f"sample but have no log_prob), so there is no best by validation NLL: "
          f"pass the name, e.g. load_density({workdir!r}, {next(iter(rows))!r})")
    name = min(explicit, key=lambda n: float(rows[n]["validation_nll"]))
  model_dir = os.path.join(workdir, "models", name)
  if not os.path.exists(os.path.join(model_dir, "model.json")):
    raise UsageError(f"no trained model {name!r} in {workdir}/models")
  with open(os.path.join(model_dir, "model.json")) as f:
    spec = json.load(f)
  model = models.get_density_model(spec["name"], **spec["model"])
  abstract = jax.eval_shape(
      lambda: init_variables(model, jax.random.key(0), jnp.zeros((4, 2))))
  params = ocp.StandardCheckpointer().restore(
      os.path.join(os.path.abspath(model_dir), "params"), abstract["params"])
  return TrainedDensity(spec["name"], model, params)
