"""Generative adversarial network (chapter 4): an implicit model of the world map.

A generator G maps noise eps ~ N(0, I) to a point; a discriminator D scores
points, real (training data) against fake (G's samples). The model has samples
but no density: ``log_prob`` raises, and the GAN is scored from its samples
alone by the yardstick (``genmodels.density.yardstick``: binned KL, land precision and
recall).

**Objective: the non-saturating loss with an R1 penalty** (Mescheder et al.
2018, "Which training methods for GANs actually converge?"):

    D: softplus(-D(x_real)) + softplus(D(G(eps))) + (r1_weight / 2) |grad_u D(u_real)|^2
    G: softplus(-D(G(eps))) + box_weight * |G's raw output beyond the box|^2

The non-saturating generator loss keeps G's gradient alive when D is confident
(the minimax log(1 - D) saturates exactly then). R1 penalises D's slope on the
data only: it vanishes at the equilibrium (G = data, D constant), so unlike a
Wasserstein critic's 1-Lipschitz gradient penalty it does not bias the solution,
and it damps the rotation of simultaneous gradient play. A Wasserstein critic
must hold its Lipschitz bound over the whole box (penalty points between real
and fake) and still resolve coastlines at 1 degree: no advantage here.

**The engine's single gradient.** The train step takes one gradient of the
scalar ``training_loss`` with respect to all parameters, which have exactly two
parts, ``generator`` and ``discriminator``, each with its own optimizer
(``optax.multi_transform``). The loss is written so that each part receives the
gradient of its own objective only (simultaneous updates):

    loss = d_loss(D params, stop_gradient(G samples))
         + g_loss(G params, through stop_gradient(D params)).

**What made it train** (measured; an MLP pair on raw (lon, lat) reached a binned
KL of 0.87 at 1 degree with D at chance):

* *D sees Fourier features* [u, sin(pi k u), cos(pi k u)], k = 1..32, of the point
  normalised to u in [-1, 1]^2: a small MLP can then draw coastlines, and D is
  no longer at chance. With D learning faster than G (two time-scale rates).
* *Coarse to fine* (``coarse_to_fine_steps``): a GAN cannot move mass between
  continents once D has drawn the oceans, since every path crosses a valley of D
  (fakes are pushed to the nearest coast, whatever the continents' shares). So
  D starts seeing only frequencies k <= 2 (continental scale: no oceans in its
  view, only which regions have too many fakes) and frequency k fades in
  linearly over the first ``coarse_to_fine_steps`` steps (a half-cosine ramp per
  frequency, as BARF does for coordinate networks). This cut the binned KL at 4
  degrees from 0.45 to 0.18 and at 1 degree from 0.60 to 0.38 (one run each:
  see the spread below). The step count lives in the mutable collection
  "schedule" (checkpointed with the state, so resume is exact); outside
  training (parameters only) D sees every frequency.
* *The generator starts at the product of the data's marginals and stays in
  the box.* G's base point takes each coordinate's empirical inverse CDF (knots
  at the training data's quantiles: a data-dependent start that puts the right
  mass in every band of latitude; it alone scores a binned KL of 0.62 at 1
  degree and land precision 0.63), then residual warps whose last layers start
  at zero move it. The output is folded into the box (longitude wraps around,
  latitude reflects: slope +-1, no vanishing gradient and no pile-up on an edge,
  as a squashing tanh or erf gave at the South Pole), and a quadratic penalty on
  the raw output beyond the box gives G a restoring force: without it G's
  output drifted ever further out, the fold turned it into noise and training
  diverged to a uniform sampler.
* *Continental shares from a banded start* (``generator_bands``): coarse to
  fine still left continents' shares wrong (South America at 0.57 of its mass,
  Australia at 1.46). With B bands, longitude's inverse CDF is taken within the
  band of latitude eps_1 falls in (B equal-mass bands, knots started at the
  data's longitude quantiles in each): the start has the data's coarse joint
  shares, which the GAN cannot fix itself. Alone (untrained) it scores a binned
  KL at 1 degree of 0.62 / 0.33 / 0.23 / 0.17 for B = 0 / 8 / 16 / 32 (land
  precision 0.63 / 0.79 / 0.86 / 0.90): from B = 16 the start is a histogram
  estimate, better at 1 degree than any trained GAN here, so B stays coarse.

Measured scores and the variants tried, with their spread over draws: docs/notes.md.
"""

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from genmodels.errors import UsageError
from genmodels.models import base
from genmodels.models import fields
from genmodels.models.gan_networks import (COARSE_START, Discriminator, Generator,
                                           StepCounter, box_excess, fold_into_box)
from genmodels.numerics import coords
from genmodels.numerics import rejection
from genmodels.training import optim

Array = jax.Array

NO_DENSITY = ("the GAN is an implicit model: it has no log_prob; score its "
              "samples with the yardstick (genmodels.density.yardstick.score_samples)")


# The two objectives, as pure functions of a discriminator ``d(params, u)``. ------


def r1_penalty(d: Callable, d_params, real: Array) -> Array:
  """E |grad_u D(u)|^2 over the real points (one gradient per point)."""
  grads = jax.grad(lambda u: jnp.sum(d(d_params, u)))(real)
  return jnp.mean(jnp.sum(grads ** 2, -1))


def discriminator_loss(d: Callable, d_params, real: Array, fake: Array,
                       r1_weight: float) -> tuple[Array, dict]:
  """softplus(-D(real)) + softplus(D(fake)) + r1_weight / 2 * R1, and metrics."""
  logit_real, logit_fake = d(d_params, real), d(d_params, fake)
  adversarial = jnp.mean(jax.nn.softplus(-logit_real)) + jnp.mean(
      jax.nn.softplus(logit_fake))
  r1 = r1_penalty(d, d_params, real) if r1_weight else jnp.zeros(())
  metrics = {
      "d_adversarial": adversarial, "r1": r1,
      "d_real": jnp.mean(jax.nn.sigmoid(logit_real)),
      "d_fake": jnp.mean(jax.nn.sigmoid(logit_fake)),
      "d_accuracy": 0.5 * (jnp.mean(logit_real > 0) + jnp.mean(logit_fake < 0)),
  }
  return adversarial + 0.5 * r1_weight * r1, metrics


def generator_loss(d: Callable, d_params, raw: Array, box_weight: float) -> tuple[Array, dict]:
  """The non-saturating loss softplus(-D(fake)) = -log sigmoid(D(fake)) of the
  folded fakes, plus box_weight * E[box_excess(raw)], and metrics.

  ``raw`` is the generator's output before ``fold_into_box``.
  """
  adversarial = jnp.mean(jax.nn.softplus(-d(d_params, fold_into_box(raw))))
  excess = jnp.mean(box_excess(raw))
  return adversarial + box_weight * excess, {"g_adversarial": adversarial,
                                             "box_excess": excess}


class GAN(base.DensityModel):
  """Generator and discriminator MLPs on (lon, lat); samples, no density.

  Parameters have two top-level parts, ``generator`` and ``discriminator``, for
  an optimizer block of blocks (one optimizer each).

  Attributes:
    lo, hi: the data box; both networks work in u = (x - centre) / half-width,
      and every sample lies inside the box.
    noise_dim: dimension of the generator's noise eps ~ N(0, I).
    generator_hidden, generator_depth, generator_blocks: G's residual warps
      (``Generator``): blocks of depth hidden layers each.
    generator_frequencies: Fourier frequencies of the point each warp moves.
    generator_quantiles: knots of the base point's inverse CDFs.
    generator_bands: latitude bands of the base point's longitude (0: the
      product of the marginals).
    discriminator_hidden, discriminator_depth, discriminator_frequencies: D's
      MLP and the Fourier frequencies of its input point.
    r1_weight: gamma of the R1 penalty (gamma / 2) E |grad_u D(u_real)|^2.
    box_weight: weight of G's penalty on its raw output beyond the box.
    coarse_to_fine_steps: steps over which D's frequencies fade in from
      COARSE_START to all (0: all from the start). About 2/3 of the run.
    rejection_quantile: > 0: ``sample`` keeps G's points with probability
      exp(D - M), M this quantile of D (discriminator rejection sampling,
      ``rejection.py``); 0: G's points as they come.
  """
  trains_by_nll = False  # trains on its own training_loss
  has_density = False  # implicit: scored by the sample yardstick alone

  lo: Sequence[float] = (-180.0, -90.0)
  hi: Sequence[float] = (180.0, 90.0)
  noise_dim: int = 2
  generator_hidden: int = 128
  generator_depth: int = 2
  generator_blocks: int = 2
  generator_frequencies: int = 16
  generator_quantiles: int = 256
  generator_bands: int = 0
  discriminator_hidden: int = 128
  discriminator_depth: int = 3
  discriminator_frequencies: int = 32
  r1_weight: float = 1e-3
  box_weight: float = 100.0
  coarse_to_fine_steps: int = 8000
  rejection_quantile: float = 0.999

  def setup(self):
    fields.require(self, positive=("noise_dim", "generator_hidden", "generator_quantiles",
                                   "discriminator_hidden"),
                   nonnegative=("generator_depth", "generator_blocks",
                                "generator_frequencies", "generator_bands",
                                "discriminator_depth", "discriminator_frequencies",
                                "coarse_to_fine_steps"), box=True)
    if not 0.0 <= self.rejection_quantile <= 1.0:  # NaN fails too
      raise UsageError(f"rejection_quantile must be in [0, 1] (0: no rejection), "
                       f"got {self.rejection_quantile}")
    if self.coarse_to_fine_steps:
      self.counter = StepCounter()
    self.generator = Generator(self.noise_dim, self.generator_hidden,
                               self.generator_depth, self.generator_blocks,
                               self.generator_frequencies, self.generator_quantiles,
                               len(self.lo), self.generator_bands)
    self.discriminator = Discriminator(self.discriminator_hidden,
                                       self.discriminator_depth,
                                       self.discriminator_frequencies)

  @property
  def affine(self) -> coords.Affine:
    return coords.Affine.centred(self.lo, self.hi)

  def to_unit(self, x: Array) -> Array:
    return self.affine.to_unit(x)

  def from_unit(self, u: Array) -> Array:
    return self.affine.from_unit(u)

  def noise(self, rng: Array, n: int) -> Array:
    return jax.random.normal(rng, (n, self.noise_dim))

  def __call__(self, x: Array) -> Array:
    """D's logit of points x [N, 2] (in data units)."""
    return self.discriminator(self.to_unit(x))

  def training_loss(self, x: Array, rng: Array) -> tuple[Array, dict]:
    """d_loss(D, stop_gradient(G samples)) + g_loss(G, stop_gradient(D)).

    One fake per real point (batch size n), noise from ``noise(rng, n)``.
    """
    init_u = None
    if self.is_initializing():
      # The engine passes all the training data: the generator's quantile knots
      # start at its quantiles; the rest of init needs only shapes.
      init_u = self.to_unit(x)
      x = x[:1024]
    real = self.to_unit(x)
    raw = self.generator(self.noise(rng, x.shape[0]), init_u)
    fake = fold_into_box(raw)
    if self.is_initializing():
      self.discriminator(real)
    level = self.frequency_level()
    d_params = self.discriminator.variables["params"]
    d_module = self.discriminator.clone(parent=None)
    d = lambda params, u: d_module.apply({"params": params}, u, level)
    d_loss, metrics = discriminator_loss(d, d_params, real,
                                         jax.lax.stop_gradient(fake), self.r1_weight)
    g_loss, g_metrics = generator_loss(d, jax.lax.stop_gradient(d_params), raw,
                                       self.box_weight)
    metrics = {**metrics, **g_metrics, "d_loss": d_loss, "g_loss": g_loss}
    if level is not None:
      metrics["frequency_level"] = level
    return d_loss + g_loss, metrics

  def frequency_level(self):
    """The discriminator's frequency level this step (advancing the counter), or
    None (all frequencies) without coarse-to-fine or outside training."""
    if not self.coarse_to_fine_steps:
      return None
    step = self.counter(advance=True)
    if step is None:
      return None
    k = float(self.discriminator_frequencies)
    progress = jnp.minimum(step.astype(jnp.float32) / self.coarse_to_fine_steps, 1.0)
    return COARSE_START + (k - COARSE_START) * progress

  def sample(self, rng: Array, n: int) -> Array:
    """n points [n, 2] in data units: G(eps), eps ~ N(0, I), kept by D's
    rejection rule when ``rejection_quantile`` > 0."""
    propose = lambda key, m: fold_into_box(self.generator(self.noise(key, m)))
    if not self.rejection_quantile or self.is_initializing():
      u = propose(rng, n)
      if self.is_initializing():
        self.discriminator(u)
      return self.from_unit(u)
    return self.from_unit(rejection.rejection_sample(
        rng, propose, self.discriminator, n, self.rejection_quantile))

  def log_prob(self, x: Array) -> Array:
    raise UsageError(NO_DENSITY)


def _unit():
  """Two players, two optimizers (D learns faster), no clipping; G starts at
  the data's longitude quantiles in 8 bands of latitude."""
  u = base.density_unit(
      num_steps=12_000, batch_size=256, generator_hidden=128, generator_blocks=2,
      discriminator_hidden=128, discriminator_depth=3, r1_weight=1e-3,
      generator_frequencies=32, discriminator_frequencies=32,
      coarse_to_fine_steps=8000, generator_bands=8)
  u.optimizer = ml_collections.ConfigDict({
      part: optim.optimizer_config(name="adam", learning_rate=lr,
                                   schedule="warmup_cosine", warmup_steps=200)
      for part, lr in (("generator", 5e-4), ("discriminator", 2e-3))})
  return u


def _shrink(u):
  u.model.update(generator_hidden=16, generator_depth=1, generator_blocks=1,
                 generator_frequencies=4, generator_quantiles=16,
                 discriminator_hidden=16, discriminator_depth=1,
                 discriminator_frequencies=4, coarse_to_fine_steps=20)


GAN_CARD = base.ModelCard(
    "gan", GAN, "implicit", "GAN", "GAN (non-saturating, R1; rejection-sampled)",
    chapter=4, unit=_unit, smoke=_shrink, groups=("taxonomy",))
