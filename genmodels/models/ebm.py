"""Energy-based model (chapter 7): p(x) = exp(-E(x)) / Z on the box, trained by CD.

An energy network E(x) (an MLP on Fourier features of the standardised point,
``EnergyNet``) defines an unnormalised density exp(-E(x)) on the data box
[lo, hi] (density 0 outside). It is trained as the book trains it, by
contrastive divergence with Langevin samples from a replay buffer:

    loss = mean E(data) - mean E(samples) + alpha * (mean E(data)^2 + mean E(samples)^2)

whose parameter gradient is the maximum-likelihood gradient
E_data[grad E] - E_model[grad E] when the samples come from the model (the
samples are constants: stop_gradient); alpha fixes E's free additive constant
and bounds its range. Each step draws one chain per data point from the
replay buffer (a mutable collection ``buffer``/``x`` [buffer_size, 2] in data
units, uniform noise over the box at init), restarts a random
``reinit_fraction`` (5%) of them from uniform noise over the box, runs
``langevin_steps`` steps and writes the chain ends back to their slots.

Langevin dynamics (``numerics.langevin.langevin``) run in standardised coordinates
u = (x - lo) / (hi - lo) in [0, 1]^2 and propose

    u' = u - step_size * clamp(grad_u E(u), +-grad_clamp) + noise * N(0, I)

(noise = None: sqrt(2 step_size)). ``metropolis=False`` takes u' (reflected
into the box): the book's unadjusted dynamics. The defaults add two exact
Metropolis ingredients, because with the book's dynamics alone the chains do
not sample exp(-E) of a world map, and exp(-E) / Z is then not what CD fits:

* ``metropolis=True`` (MALA): u' is accepted with the Metropolis-Hastings
  probability and rejected off the box, so exp(-E) on the box is exactly
  invariant whatever the step, noise and clamp. Steps can then be large (the
  default noise is 1% of the box, 3.6 x 1.8 degrees) without blurring the
  coasts: a step into the sea is rejected.
* ``jump_every=4``: every 4th step proposes a point uniform over the box (an
  independence Metropolis move, also exact). Local steps never cross an
  ocean, so without jumps each continent keeps the chains that the uniform
  restarts dropped into its basin, CD lowers the energy of the continents
  that get too few, and whole continents end off by factors of 2-3 in mass
  (measured: South America 0.02 against 0.07, Antarctica 0.42 against 0.28,
  held-out KL 0.26-0.31 nats, against 0.08 with jumps).

Exact scoring. In 2-D the partition function is an integral over the box,
Z = integral over [lo, hi] of exp(-E(x)) dx, computed by quadrature
(``numerics.quadrature.log_integral_box``): the tensor-product composite Gauss-Legendre rule with
``quadrature_nodes`` nodes per cell side on ``quadrature_cells`` equal cells
(defaults: 360 x 180 one-degree cells, 2 x 2 nodes, 259,200 energies), summed
in log space. Per axis the rule is exact for cubics in each cell and its
error is at most sum over cells of h^5 (2!)^4 / (5 (4!)^3) max_cell |f^(4)|;
``tests/test_ebm.py`` proves that bound on truncated Gaussians whose Z is
known through erf. On trained models the default rule's log Z differs from a
720 x 360 cell, 4 x 4 node rule by 1e-5 to 6e-5 nats. ``log_prob`` computes
log Z once per call (about 0.5 s on a CPU), then the points; it takes no rng
and needs only the parameters. Where log Z was cached in the ``normalizer``
collection (``cache_normalizers``, through ``models.with_normalizers``: what
the engine does once per evaluation and ``TrainedDensity`` once per
parameters), ``log_prob`` reads it instead.

Sampling (``sample``): ``sample_steps`` steps of the same dynamics (jumps
included) from uniform starts over the box; parameters only, no buffer.

Two options beyond the book (both off by default):

* ``head="log_sigmoid"``: E(u) = softplus(-f(u)) = -log sigmoid(f(u)), so
  exp(-E) = sigmoid(f) lies in (0, 1): the model is a soft *indicator* of a
  set, flat wherever f is large. The truth is exactly that (uniform over
  land), so ripples inside the continents cost the network large f swings
  instead of small ones; the held-out KL moves from 0.085 to 0.082 nats
  under CD (docs/notes.md).
* ``training="mle"``: maximum likelihood instead of CD. In 2-D the gradient
  of log Z needs no chain: log Z is estimated from one uniform point in each
  of ``normalizer_cells`` equal cells of the box (stratified Monte Carlo,
  ``stratified_log_normalizer``), and the loss is mean E(data) + log Z-hat,
  the NLL up to the estimate's noise (its bias, about half its relative
  variance, is below 1e-4 nats at the default 8,192 cells for a density on a
  third of the box). No replay buffer, no Langevin in training (sampling
  still runs the chains). Exact MLE fits the training points closer than CD
  does and overfits sooner: it needs early stopping (a short schedule), and
  it is what the energy members of the ensemble ``ebm_tv`` are.
"""

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from genmodels.errors import UsageError
from genmodels.numerics import coords
from genmodels.numerics.langevin import langevin
from genmodels.numerics.quadrature import log_integral_box
from genmodels.numerics.features import fourier_features
from genmodels.models import base
from genmodels.models import fields

Array = jax.Array
EnergyFn = Callable[[Array], Array]


# ------------------------------------------------------------------- network

HEADS = ("linear", "log_sigmoid")
TRAININGS = ("cd", "mle")


class EnergyNet(nn.Module):
  """E(u) for u in [0, 1]^2: an MLP (SiLU) on u and sin/cos(pi k u), k = 1..F.

  ``head``: "linear" (E is the last layer's output f) or "log_sigmoid"
  (E = softplus(-f): exp(-E) = sigmoid(f), a soft indicator of a set).

  The features are per coordinate, as in the flows' conditioners; frequencies
  pi k on [0, 1] do not tie the two edges of an axis together. Smooth
  activations make E smooth, which both Langevin (gradients) and the
  quadrature (high-order rule) rely on. The last layer starts at zero, so a
  fresh model is the uniform density on the box.
  """
  hidden: int = 128
  depth: int = 3
  num_frequencies: int = 64
  head: str = "linear"

  @nn.compact
  def __call__(self, u: Array) -> Array:
    h = fourier_features(u, int(self.num_frequencies), linear=2.0 * u - 1.0)
    for _ in range(self.depth):
      h = nn.silu(nn.Dense(self.hidden)(h))
    f = nn.Dense(1, kernel_init=nn.initializers.zeros)(h)[..., 0]
    return jax.nn.softplus(-f) if self.head == "log_sigmoid" else f


# --------------------------------------------------------------------- model

class EnergyModel(base.DensityModel):
  """exp(-E(x)) / Z on the box [lo, hi]; CD training with a Langevin replay buffer.

  Attributes:
    lo, hi: the box (density 0 outside).
    hidden, depth, num_frequencies: the energy MLP (``EnergyNet``).
    head: "linear" (the book's E) or "log_sigmoid" (exp(-E) = sigmoid(f)).
    alpha: weight of the E^2 regulariser on data and sample energies.
    buffer_size: replay buffer slots (mutable collection ``buffer``/``x``).
    reinit_fraction: share of chains restarted from uniform noise each step.
    langevin_steps: Langevin steps per training step.
    step_size: Langevin step (standardised units u in [0, 1]^2).
    noise: Langevin noise std; None: sqrt(2 step_size) (targets exp(-E)).
    grad_clamp: clamp of each gradient coordinate in a Langevin step (None: none).
    metropolis: accept/reject each Langevin step (MALA): exp(-E) exactly invariant.
    jump_every: with metropolis, every k-th step is a uniform independence
      proposal (0: none), so chains mix between continents.
    sample_steps: Langevin steps of ``sample`` from uniform starts.
    quadrature_cells: cells per axis of the composite Gauss-Legendre rule for Z.
    quadrature_nodes: Gauss-Legendre nodes per cell side.
    training: "cd" (the book's contrastive divergence) or "mle" (maximum
      likelihood with a stratified Monte Carlo log Z).
    normalizer_cells: cells per axis of that estimate (one point per cell).
  """
  trains_by_nll = False  # trains on its own training_loss
  lo: Sequence[float] = (-180.0, -90.0)
  hi: Sequence[float] = (180.0, 90.0)
  hidden: int = 128
  depth: int = 3
  num_frequencies: int = 64
  head: str = "linear"
  alpha: float = 0.01
  buffer_size: int = 10_000
  reinit_fraction: float = 0.05
  langevin_steps: int = 20
  step_size: float = 5e-5
  noise: float | None = None
  grad_clamp: float | None = 1000.0
  metropolis: bool = True
  jump_every: int = 4
  sample_steps: int = 100
  quadrature_cells: Sequence[int] = (360, 180)
  quadrature_nodes: int = 2
  training: str = "cd"
  normalizer_cells: Sequence[int] = (128, 64)

  def setup(self):
    fields.require(self, positive=("hidden", "buffer_size", "quadrature_nodes"),
                   nonnegative=("depth", "num_frequencies", "jump_every",
                                "langevin_steps", "sample_steps"),  # 0: no chain steps
                   positive_pairs=("quadrature_cells", "normalizer_cells"),
                   positive_real=("step_size",), box=True)
    if not 0.0 <= self.reinit_fraction <= 1.0:
      raise UsageError(f"reinit_fraction must be in [0, 1], got {self.reinit_fraction}")
    if self.head not in HEADS:
      raise UsageError(f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
    if self.training not in TRAININGS:
      raise UsageError(f"training must be one of {', '.join(TRAININGS)}, "
                       f"got {self.training!r}")
    self.net = EnergyNet(self.hidden, self.depth, self.num_frequencies, self.head)
    # The replay buffer exists in CD training (created at init, mutable in the
    # step); scoring applies {"params": p} alone and never sees it.
    if self.training == "cd" and (self.is_mutable_collection("buffer")
                                  or self.has_variable("buffer", "x")):
      self.buffer = self.variable(
          "buffer", "x", lambda: self._uniform(self.make_rng("params"),
                                               self.buffer_size))

  # Coordinates.
  @property
  def affine(self) -> coords.Affine:
    return coords.Affine.unit_box(self.lo, self.hi)

  def _to_unit(self, x: Array) -> Array:
    return self.affine.to_unit(x)

  def _from_unit(self, u: Array) -> Array:
    return self.affine.from_unit(u)

  def _noise(self) -> float:
    return float(np.sqrt(2.0 * self.step_size)) if self.noise is None else float(self.noise)

  def _pure_energy(self, frozen: bool) -> EnergyFn:
    """E(u) as a pure function of u in [0, 1]^2 (for JAX transforms and loops).

    ``frozen``: the parameters are constants (stop_gradient). The network's
    parameters must exist (call ``energy`` first during init).
    """
    params = self.net.variables["params"]
    if frozen:
      params = jax.lax.stop_gradient(params)
    net = EnergyNet(self.hidden, self.depth, self.num_frequencies, self.head, parent=None)
    return lambda u: net.apply({"params": params}, u)

  # Density.
  def __call__(self, x: Array) -> Array:
    return self.log_prob(x)

  def energy(self, x: Array) -> Array:
    """E(x) [N] for points x [N, 2] in data units."""
    return self.net(self._to_unit(x))

  def log_normalizer(self) -> Array:
    """log Z = log of the integral of exp(-E) over the box, by quadrature."""
    if self.is_initializing() and "params" not in self.net.variables:
      self.energy(jnp.zeros((1, len(self.lo)), jnp.float32))
    energy_u = self._pure_energy(frozen=False)
    return log_integral_box(lambda x: energy_u(self._to_unit(x)), self.lo, self.hi,
                            self.quadrature_cells, self.quadrature_nodes)

  def cache_normalizers(self) -> None:
    """Stores log Z in the ``normalizer`` collection (``models.with_normalizers``):
    ``log_prob`` then reads it instead of running the quadrature on every call."""
    self.put_variable("normalizer", "log_z", self.log_normalizer())

  def log_prob(self, x: Array) -> Array:
    """-E(x) - log Z inside the box, -inf outside; [N]. log Z is computed once
    per call, or read from the ``normalizer`` collection where it was cached."""
    lo, hi = jnp.asarray(self.lo), jnp.asarray(self.hi)
    inside = jnp.all((x >= lo) & (x <= hi), -1)
    log_z = (self.get_variable("normalizer", "log_z")
             if self.has_variable("normalizer", "log_z") else self.log_normalizer())
    log_p = -self.energy(x) - log_z
    return jnp.where(inside, log_p, -jnp.inf)

  # Sampling.
  def langevin_chains(self, x0: Array, rng: Array, num_steps: int
                      ) -> tuple[Array, Array]:
    """Langevin chains from x0 [N, 2] (data units): (ends, acceptance rate)."""
    if self.is_initializing() and "params" not in self.net.variables:
      self.energy(x0[:1])
    u, acceptance = langevin(self._pure_energy(frozen=True), self._to_unit(x0), rng,
                             num_steps, self.step_size, self._noise(),
                             self.grad_clamp, self.metropolis, self.jump_every)
    return jax.lax.stop_gradient(self._from_unit(u)), acceptance

  def _uniform(self, rng: Array, n: int) -> Array:
    return self._from_unit(jax.random.uniform(rng, (n, len(self.lo))))

  def sample(self, rng: Array, n: int) -> Array:
    """n points: ``sample_steps`` Langevin steps from uniform starts over the box."""
    start_rng, chain_rng = jax.random.split(rng)
    return self.langevin_chains(self._uniform(start_rng, n), chain_rng,
                                self.sample_steps)[0]

  # Training.
  def negative_samples(self, n: int, rng: Array) -> tuple[Array, Array, Array]:
    """CD's samples for n data points: (chain ends [n, 2], buffer slots [n], acceptance).

    Chains start from n buffer slots (distinct while n <= buffer_size), a
    random ``reinit_fraction`` of them from uniform noise over the box
    instead, and run ``langevin_steps`` steps. Reads the buffer;
    ``training_loss`` writes it.
    """
    idx_rng, mask_rng, fresh_rng, chain_rng = jax.random.split(rng, 4)
    if n <= self.buffer_size:
      idx = jax.random.permutation(idx_rng, self.buffer_size)[:n]
    else:
      idx = jax.random.randint(idx_rng, (n,), 0, self.buffer_size)
    fresh = jax.random.uniform(mask_rng, (n, 1)) < self.reinit_fraction
    starts = jnp.where(fresh, self._uniform(fresh_rng, n), self.buffer.value[idx])
    samples, acceptance = self.langevin_chains(starts, chain_rng, self.langevin_steps)
    return samples, idx, acceptance

  def stratified_log_normalizer(self, rng: Array) -> Array:
    """A stochastic estimate of log Z (differentiable in the parameters).

    One uniform point in each of the ``normalizer_cells`` equal cells of the
    box (stratified Monte Carlo): Z-hat = box area * mean of exp(-E) over
    them, unbiased for Z; log Z-hat is biased low by about half its relative
    variance.
    """
    nx, ny = (int(c) for c in self.normalizer_cells)
    corner = jnp.stack(jnp.meshgrid(jnp.arange(nx), jnp.arange(ny)), -1)
    jitter = jax.random.uniform(rng, (ny, nx, 2))
    u = ((corner + jitter) / jnp.asarray([nx, ny], jnp.float32)).reshape(-1, 2)
    return jax.nn.logsumexp(-self.net(u)) - np.log(nx * ny) + self.affine.log_det

  def training_loss(self, x: Array, rng: Array) -> tuple[Array, dict]:
    """CD with replay-buffer Langevin samples (updates the buffer), or with
    ``training="mle"`` the NLL with a stratified estimate of log Z."""
    e_data = self.energy(x)
    if self.training == "mle" and not self.is_initializing():
      nll = jnp.mean(e_data) + self.stratified_log_normalizer(rng)
      return nll, {"nll": nll}
    if self.is_initializing():  # Parameters and buffer only: no chains at init.
      return jnp.mean(e_data), {}
    samples, idx, acceptance = self.negative_samples(x.shape[0], rng)
    self.buffer.value = self.buffer.value.at[idx].set(samples)
    e_samples = self.energy(samples)
    cd = jnp.mean(e_data) - jnp.mean(e_samples)
    reg = jnp.mean(e_data**2) + jnp.mean(e_samples**2)
    loss = cd + self.alpha * reg
    return loss, {"cd": cd, "e_data": jnp.mean(e_data),
                  "e_samples": jnp.mean(e_samples), "reg": reg,
                  "acceptance": acceptance}


SMALL = dict(hidden=16, depth=1, num_frequencies=4, sample_steps=10,
             quadrature_cells=(90, 45))


def _unit():
  """Contrastive divergence with Langevin samples from a replay buffer, on a
  soft-indicator energy (exp(-E) = sigmoid(f)). Its samples cost a Langevin
  chain each: the yardstick uses 100,000."""
  u = base.density_unit(num_steps=2500, learning_rate=2e-3, batch_size=512,
                        sample_steps=50, head="log_sigmoid")
  u.num_samples = 100_000
  return u


EBM = base.ModelCard(
    "ebm", EnergyModel, "approximate", "energy-based",
    "energy-based model (CD, Langevin)", chapter=7, unit=_unit,
    smoke=lambda u: u.model.update(SMALL, buffer_size=512, langevin_steps=5),
    groups=("taxonomy",))
