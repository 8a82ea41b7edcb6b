"""A fine histogram with a total-variation prior: sharp coasts from counts alone.

The truth on the map is uniform over a set (the land). A histogram on equal
cells of the box whose cell masses are proportional to rho = sigmoid(theta)
is a soft indicator of a set, cell by cell (0.25 degrees by default: 1440 x
720 cells, one parameter each); its maximum-likelihood fit puts all mass on the
cells that hold a training point, which is no estimate at all with 100,000
points over 275,000 land cells. The prior that matches the truth's shape is a
penalty on the set's perimeter: the total variation of rho,

    loss = -(1/N) sum_i log q(x_i) + tv_weight * TV(rho),
    TV(rho) = sum over neighbouring cells of |rho - rho'| * (shared edge length)
              / (box width),

smoothed as sqrt(d^2 + eps^2) - eps so that Adam sees a gradient at d = 0. A
hole inside a continent then costs its whole rim, so interiors fill and stay
flat; an empty stretch of sea costs nothing to leave empty, so the coast sits
at the data's edge, to a cell. ``tv_weight`` (0.02) is the one knob: on the
validation points 0.03 is best alone, 0.02 best inside the ``ebm_tv`` mixture
(docs/notes.md).

Training is full-batch: the loss depends on the data only through the cell
counts, computed once at init from the training set (the collection
``counts``, threaded by the engine like any model state); ``training_loss``
ignores its batch. Minibatches do not work here: with 2,048 points per step
Adam rescales each rarely-seen cell's gradient to full size and the fit
collapses onto the points (held-out KL 0.6-2.0 nats, measured).

``log_prob`` is exact: log rho(cell) - log sum rho - log(cell area), -inf
outside the box. ``sample`` draws a cell by its mass, then a uniform point in it.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from genmodels.errors import UsageError
from genmodels.models import base
from genmodels.models import fields

Array = jax.Array


class TVHistogram(base.DensityModel):
  """Cell masses ~ sigmoid(theta) on ``cells`` = (columns, rows) equal cells of [lo, hi].

  Attributes:
    lo, hi: the box (density 0 outside).
    cells: cells along (longitude, latitude).
    tv_weight: weight of the total variation of sigmoid(theta) (a perimeter,
      in units of the box's width).
    tv_eps: smoothing of |d| in the penalty.
  """
  trains_by_nll = False  # trains on its own training_loss
  lo: Sequence[float] = (-180.0, -90.0)
  hi: Sequence[float] = (180.0, 90.0)
  cells: Sequence[int] = (1440, 720)
  tv_weight: float = 0.02
  tv_eps: float = 1e-3

  def setup(self):
    fields.require(self, positive_pairs=("cells",), box=True)
    if len(self.cells) != 2:
      raise UsageError(f"cells must be two counts (columns, rows), got {self.cells}")
    if not 0 <= self.tv_weight < float("inf"):
      raise UsageError(f"tv_weight must be >= 0, got {self.tv_weight}")
    nx, ny = (int(c) for c in self.cells)
    self.theta = self.param("theta", nn.initializers.zeros, (ny, nx))
    # The training counts: filled by ``training_loss`` at init.
    if self.is_mutable_collection("counts") or self.has_variable("counts", "n"):
      self.counts = self.variable("counts", "n", jnp.zeros, (ny, nx), jnp.float32)

  def _geometry(self):
    lo, hi = np.asarray(self.lo, np.float64), np.asarray(self.hi, np.float64)
    size = (hi - lo) / np.asarray(self.cells, np.float64)  # cell width, height
    return lo, hi, size

  def cell_index(self, x: Array) -> tuple[Array, Array]:
    """(row, column) of each point's cell (edges clipped into the box)."""
    lo, _, size = self._geometry()
    col = jnp.floor((x[:, 0] - lo[0]) / size[0]).astype(jnp.int32)
    row = jnp.floor((x[:, 1] - lo[1]) / size[1]).astype(jnp.int32)
    nx, ny = (int(c) for c in self.cells)
    return jnp.clip(row, 0, ny - 1), jnp.clip(col, 0, nx - 1)

  def log_density_grid(self) -> Array:
    """[rows, columns]: the log-density in each cell."""
    _, _, size = self._geometry()
    log_rho = jax.nn.log_sigmoid(self.theta)
    return log_rho - jax.nn.logsumexp(log_rho) - float(np.log(size[0] * size[1]))

  def log_prob(self, x: Array) -> Array:
    lo, hi, _ = self._geometry()
    inside = jnp.all((x >= lo) & (x <= hi), -1)
    row, col = self.cell_index(x)
    return jnp.where(inside, self.log_density_grid()[row, col], -jnp.inf)

  def total_variation(self) -> Array:
    """TV of sigmoid(theta): |differences| times shared edge length, over box width."""
    lo, hi, size = self._geometry()
    rho = jax.nn.sigmoid(self.theta)
    eps = float(self.tv_eps)
    smooth_abs = lambda d: jnp.sum(jnp.sqrt(d**2 + eps**2) - eps)
    across_columns = smooth_abs(rho[:, 1:] - rho[:, :-1]) * size[1]
    across_rows = smooth_abs(rho[1:] - rho[:-1]) * size[0]
    return (across_columns + across_rows) / float(hi[0] - lo[0])

  def training_loss(self, x: Array, rng: Array) -> tuple[Array, dict]:
    """Full batch: the NLL of the training counts plus the TV penalty (x unused
    after init, where it fills the counts)."""
    del rng
    if self.is_initializing():
      row, col = self.cell_index(x)
      self.counts.value = self.counts.value.at[row, col].add(1.0)
    counts = self.counts.value
    nll = -jnp.sum(counts * self.log_density_grid()) / jnp.sum(counts)
    tv = self.total_variation()
    return nll + self.tv_weight * tv, {"nll": nll, "tv": tv}

  def sample(self, rng: Array, n: int) -> Array:
    """A row by its mass, a column by its mass within the row (two short
    cumulative sums: one over a million cells would lose cells to float32
    rounding), then a uniform point in the cell."""
    row_rng, col_rng, jitter_rng = jax.random.split(rng, 3)
    log_rho = jax.nn.log_sigmoid(self.theta)
    row_cdf = jnp.cumsum(jax.nn.softmax(jax.nn.logsumexp(log_rho, axis=1)))
    row = jnp.searchsorted(row_cdf, jax.random.uniform(row_rng, (n,)) * row_cdf[-1])
    row = jnp.clip(row, 0, row_cdf.shape[0] - 1)
    col_cdf = jnp.cumsum(jax.nn.softmax(log_rho, axis=1), axis=1)
    target = jax.random.uniform(col_rng, (n,)) * col_cdf[row, -1]
    nx = col_cdf.shape[1]

    def bisect(_, bounds):  # first column whose cdf reaches the target
      low, high = bounds
      mid = (low + high) // 2
      right = col_cdf[row, mid] < target
      return jnp.where(right, mid + 1, low), jnp.where(right, high, mid)

    steps = int(np.ceil(np.log2(nx))) + 1
    col, _ = jax.lax.fori_loop(0, steps, bisect, (jnp.zeros((n,), jnp.int32),
                                                 jnp.full((n,), nx - 1, jnp.int32)))
    lo, _, size = self._geometry()
    corner = jnp.stack([col, row], -1).astype(jnp.float32)
    u = jax.random.uniform(jitter_rng, (n, 2))
    return (lo + (corner + u) * size).astype(jnp.float32)


def _unit():
  """Full batch (its loss reads the training counts; the batch is unused),
  Adam at 0.1."""
  u = base.density_unit(num_steps=1000, learning_rate=0.1, batch_size=256)
  u.optimizer.update(name="adam", grad_clip=0.0)
  return u


HISTOGRAM = base.ModelCard(
    "histogram", TVHistogram, "tractable", "histogram",
    "histogram, 0.25°, total-variation prior", unit=_unit,
    smoke=lambda u: u.model.update(cells=(72, 36)), groups=("taxonomy",))
