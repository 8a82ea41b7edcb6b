"""Continuous-time generative models (chapter 8): flow matching and diffusion.

Both learn a time-dependent network on 2-D points, both sample by running time
backwards from a standard normal, and both give *exact* log-likelihoods through
an ODE (``ode.py``): the point is carried to the noise end while the exact
divergence (trace of the 2x2 Jacobian, by jax.jacfwd) of the ODE's velocity is
accumulated, with fixed-step RK4 (``num_ode_steps``; 16 steps move the world
map's held-out NLL by < 0.005 nats against 32).

* ``FlowMatching``: a velocity field v(u, t) trained by conditional flow
  matching on straight (rectified) paths u_t = (1 - t) u_0 + t u_1 from noise
  u_0 ~ N(0, I) at t = 0 to data u_1 at t = 1, with target u_1 - u_0. Its flow
  du/dt = v is the model: sampling and the likelihood integrate the same ODE.

* ``Diffusion``: the book's denoising diffusion model. A variance-preserving
  forward process u_t = alpha_t u + sigma_t eps with alpha_t^2 + sigma_t^2 = 1
  and a cosine noise schedule (written through the log signal-to-noise ratio
  lambda_t = log alpha_t^2 / sigma_t^2, truncated to [logsnr_min, logsnr_max],
  so both ends are finite); a noise predictor eps(u_t, t) trained by the DDPM
  noise-prediction MSE; ancestral (DDPM) sampling on a grid of
  ``num_sampling_steps`` steps, each drawing from the Gaussian posterior
  q(u_s | u_t, u_0 = the prediction). Its likelihood is that of the
  probability-flow ODE of the same VP SDE, whose marginals equal the
  diffusion's: with beta_t = -d log alpha_t^2 / dt = -lambda'_t sigma_t^2 and
  score = -eps / sigma_t,

      du/dt = -beta_t / 2 (u + score) = lambda'_t / 2 (sigma_t^2 u - sigma_t eps(u, t)),

  integrated with lambda itself as the ODE variable (du/dlambda = (sigma^2 u -
  sigma eps) / 2: the same ODE, without the cosine schedule's steep ends), from
  lambda = logsnr_max (sigma_min = sqrt(sigmoid(-logsnr_max)), where the density
  of the slightly noised data is taken as the model's density) to logsnr_min
  (nearly pure noise, base N(0, I)).

What makes the likelihoods good in a few minutes of 2 CPU cores (each change
measured at equal compute on the world map's held-out KL: docs/notes.md):

* the stable target (``stable_target``, both models): the regression target is
  replaced by its posterior mean given u_t over the batch, which removes most
  of the loss's variance at high noise;
* noise-damped Fourier features (``blur_features``, both): a frequency f of u_t
  is damped by exp(-(f s)^2 / 2), s the noise level, exactly as noise damps it
  in the noisy density, so the field is smooth where it should be;
* for diffusion, eps = sigma u_t + alpha F(u_t, t) (``parameterization="skip"``,
  EDM's preconditioning: the ODE's velocity -alpha sigma F / 2 vanishes at both
  ends of the schedule) with noise levels uniform in lambda
  (``time_sampling="logsnr"``, the ELBO weighting). ``parameterization="eps"``,
  ``time_sampling="cosine"``, ``stable_target=False`` and
  ``blur_features=False`` give the book's plain recipe.

Coordinates: the networks work in standardised units u = (x - loc) / scale;
the change of variables adds -sum(log scale) to every log-density. The defaults
of loc and scale are the world map's training mean and standard deviation
(rounded), so the data have about unit variance per axis like the noise.

Interface (like the other density models): ``log_prob(x) -> [N]`` and
``sample(rng, n) -> [n, 2]``, in data units; plus ``training_loss(x, rng) ->
(loss, metrics)``, which the training engine minimises and initialises with
(``model.init(key, x, key2, method="training_loss")``). ``log_prob`` also
initialises the same parameters, so ``model.init(key, x, method="log_prob")``
gives the same tree.
"""

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from genmodels.errors import UsageError
from genmodels.numerics import coords
from genmodels.numerics import ode
from genmodels.models import base
from genmodels.models import fields
from genmodels.models.time_field import TimeField, posterior_weights, stratified

Array = jax.Array


class _Continuous(base.DensityModel):
  """Shared plumbing: standardisation, the network, the ODE likelihood."""
  trains_by_nll = False  # trains on its own training_loss
  loc: Sequence[float] = (18.0, 0.0)
  scale: Sequence[float] = (88.0, 58.0)
  hidden: int = 256
  depth: int = 4
  num_frequencies: int = 16
  max_frequency: float = 100.0
  time_frequencies: int = 8
  blur_features: bool = True  # damp Fourier features by the noise (TimeField)
  num_ode_steps: int = 16  # RK4 steps of the likelihood (and FM sampling) ODE
  ode_time_power: float = 2.0  # > 1: smaller ODE steps near the data end

  def _net_def(self, **parent) -> TimeField:
    return TimeField(out=2, hidden=self.hidden, depth=self.depth,
                     num_frequencies=self.num_frequencies,
                     max_frequency=self.max_frequency,
                     time_frequencies=self.time_frequencies, **parent)

  positive_fields = ("hidden", "depth", "num_ode_steps")

  def setup(self):
    fields.require(self, positive=self.positive_fields,
                   nonnegative=("num_frequencies", "time_frequencies"),
                   positive_real=("scale",))
    self.net = self._net_def()

  @property
  def affine(self) -> coords.Affine:
    return coords.Affine.standardise(self.loc, self.scale)

  def to_unit(self, x):
    return self.affine.to_unit(x)

  def from_unit(self, u):
    return self.affine.from_unit(u)

  @property
  def log_scale(self) -> float:
    return self.affine.log_det

  def _pure_net(self, x):
    """The network as a pure function of (u, t) with this module's parameters.

    (jax.jacfwd cannot trace a bound Flax submodule, so the ODE gets this.)
    """
    if self.is_initializing():  # create the parameters through the bound net
      self.net(jnp.zeros((1, x.shape[-1]), x.dtype), jnp.zeros((1,), x.dtype), None)
    variables = self.net.variables
    net = self._net_def(parent=None)  # unbound: a pure function of variables
    raw = lambda v, t: net.apply(variables, v, *self.net_inputs(
        jnp.broadcast_to(jnp.asarray(t, v.dtype), v.shape[:-1])))
    return lambda v, t: self.output(raw, v, t)

  def net_inputs(self, t):
    """The network's time input in [0, 1] and, with ``blur_features``, its blur."""
    return self.net_time(t), (self.blur(t) if self.blur_features else None)

  def blur(self, t):
    """Noise level of u_t in data units (the noise's std over the data's scale)."""
    raise NotImplementedError

  def output(self, raw, u, t):
    """The model's prediction from the raw network raw(u, t) (default: itself)."""
    return raw(u, t)

  def net_time(self, t):
    """The network's time input, in [0, 1], for model times t."""
    return t

  # Subclasses: the ODE in standardised units, in a variable of their choice.
  def ode_interval(self) -> tuple[float, float]:
    """The ODE variable at the data end and at the base (N(0, I)) end."""
    raise NotImplementedError

  def ode_velocity(self, net, u, tau):
    """du/dtau at ODE variable tau; net(u, t) is the network at model time t."""
    raise NotImplementedError

  def ode_times(self, num_steps=None):
    """The likelihood ODE's grid, from the data end to the base end."""
    return ode.power_grid(*self.ode_interval(), num_steps or self.num_ode_steps,
                          self.ode_time_power)

  def log_prob(self, x: Array, num_ode_steps: int | None = None) -> Array:
    """Exact log-density through the ODE (RK4, exact 2-D divergence), data units.

    ``num_ode_steps`` overrides the attribute (e.g. to check convergence).
    """
    return self.log_prob_with(self._pure_net(x), x, num_ode_steps)

  def log_prob_with(self, net, x: Array, num_ode_steps: int | None = None) -> Array:
    """``log_prob`` with the network replaced by a function net(u, t) -> [N, 2].

    Lets tests plug in a network whose ODE is known in closed form.
    """
    u = self.to_unit(x)
    field = lambda v, t: self.ode_velocity(net, v, t)
    lp = ode.log_prob(field, u, self.ode_times(num_ode_steps),
                      ode.standard_normal_log_prob)
    # Infinite or huge points (``coords.FAR``): density 0, not the net's NaN.
    return coords.mask_log_prob(x, lp - self.log_scale, affine=self.affine)

  def __call__(self, x: Array) -> Array:
    return self.log_prob(x)

  def training_pairs(self, u: Array, rng: Array) -> tuple[Array, Array, Array]:
    raise NotImplementedError

  def training_loss(self, x: Array, rng: Array) -> tuple[Array, dict]:
    """Mean squared error of the network against the regression target, per point."""
    ut, t, target = self.training_pairs(self.to_unit(x), rng)
    pred = self.output(lambda v, s: self.net(v, *self.net_inputs(s)), ut, t)
    loss = jnp.mean(jnp.sum((pred - target)**2, -1))
    return loss, {"mse": loss}


class FlowMatching(_Continuous):
  """Conditional flow matching with straight paths from N(0, I) (t=0) to data (t=1).

  Training times t are stratified uniform. With ``stable_target`` the
  regression target u_1 - u_0 is replaced by its posterior mean given u_t over
  the batch (see ``time_field.posterior_weights``): same minimiser, far less variance.
  The likelihood ODE runs in t from 1 to 0 on a grid with steps growing like
  s^ode_time_power, small at the data end where the field is sharpest.
  """
  stable_target: bool = True

  def ode_interval(self):
    return 1.0, 0.0  # the ODE variable is t itself

  def blur(self, t):
    return (1.0 - t) / t  # u_t / t = u_1 + (1 - t) / t u_0 (inf at t = 0)

  def ode_velocity(self, net, u, t):
    return net(u, t)

  def training_pairs(self, u1: Array, rng: Array) -> tuple[Array, Array, Array]:
    """(u_t, t, target) for data u_1 in standardised units: v(u_t, t) ~ target."""
    noise_rng, t_rng = jax.random.split(rng)
    u0 = jax.random.normal(noise_rng, u1.shape, u1.dtype)
    t = stratified(t_rng, u1)
    ut = (1.0 - t)[:, None] * u0 + t[:, None] * u1
    target = u1 - u0
    if self.stable_target and not self.is_initializing():
      # E[u_1 - u_0 | u_t] over the batch's data points as the reference set:
      # posterior weights w_ij ∝ N(u_t,i; t_i u_1,j, (1 - t_i)^2 I), and
      # target_i = sum_j w_ij (u_1,j - u_t,i) / (1 - t_i), written as below so
      # that it stays exact as t -> 1 (where w_ij -> [i == j]).
      s = (1.0 - t)[:, None]
      w = posterior_weights(ut, t[:, None], u1, s)
      target = target + (w @ u1 - u1) / s
    return ut, t, target

  def sample(self, rng: Array, n: int) -> Array:
    """n points by integrating the ODE from noise (t = 0) to data (t = 1)."""
    return self.sample_with(self._pure_net(jnp.zeros((1, 2))), rng, n)

  def sample_with(self, net, rng: Array, n: int) -> Array:
    z = jax.random.normal(rng, (n, 2))
    u = ode.integrate(lambda v, t: self.ode_velocity(net, v, t), z,
                      self.ode_times()[::-1])
    return self.from_unit(u)


class Diffusion(_Continuous):
  """DDPM: VP diffusion, cosine schedule, noise prediction, ancestral sampling.

  The schedule is the cosine one written in log-SNR, lambda(t) =
  -2 log tan(a t + b), with b and a set so that lambda runs from
  ``logsnr_max`` at t = 0 to ``logsnr_min`` at t = 1; alpha_t^2 =
  sigmoid(lambda), sigma_t^2 = sigmoid(-lambda). The network's time input is
  (lambda - logsnr_min) / (logsnr_max - logsnr_min) in [0, 1] (1 = clean).

  ``time_sampling`` chooses the training noise levels (stratified): "cosine",
  the book's t ~ U[0, 1], whose density in lambda falls like exp(-|lambda|/2);
  or "logsnr", lambda ~ U[logsnr_min, logsnr_max], the weighting under which
  the noise-prediction MSE is the ELBO (Kingma et al., 2021), and which trains
  every unit of lambda, the likelihood ODE's variable, equally. Either has the
  same minimiser, E[eps | u_t]; they differ in where a finite network is good.

  The base N(0, I) at logsnr_min = -6 differs from the true marginal (the data
  scaled by alpha = 0.05 plus noise of variance 0.9975, data of about unit
  variance) by a KL of order alpha^4 ~ 1e-5 nats.
  """
  logsnr_min: float = -6.0
  logsnr_max: float = 12.0
  num_sampling_steps: int = 1000
  parameterization: str = "skip"
  time_sampling: str = "logsnr"
  stable_target: bool = True
  ode_time_power: float = 1.0
  positive_fields = _Continuous.positive_fields + ("num_sampling_steps",)

  def setup(self):
    if not self.logsnr_min < self.logsnr_max:
      raise UsageError(f"logsnr_min ({self.logsnr_min}) must be below logsnr_max "
                       f"({self.logsnr_max}): set the model's logsnr range")
    super().setup()

  def _ab(self):
    b = float(np.arctan(np.exp(-0.5 * self.logsnr_max)))
    a = float(np.arctan(np.exp(-0.5 * self.logsnr_min))) - b
    return a, b

  def logsnr(self, t):
    a, b = self._ab()
    return -2.0 * jnp.log(jnp.tan(a * t + b))

  def time_of_logsnr(self, lam):
    a, b = self._ab()
    return (jnp.arctan(jnp.exp(-0.5 * lam)) - b) / a

  def net_time(self, t):
    return (self.logsnr(t) - self.logsnr_min) / (self.logsnr_max - self.logsnr_min)

  def blur(self, t):
    return jnp.exp(-0.5 * self.logsnr(t))  # sigma / alpha: u_t / alpha = u + (sigma / alpha) eps

  def output(self, raw, u, t):
    """eps(u_t, t): the network itself ("eps"), or sigma_t u_t + alpha_t F ("skip").

    "skip" is EDM's preconditioning (Karras et al., 2022) written for eps: the
    prediction is exact at pure noise whatever F is, and the likelihood ODE's
    velocity becomes du/dlambda = -alpha sigma F / 2, which vanishes at both
    ends of the schedule, where a network is least trained. The loss is the
    same noise-prediction MSE.
    """
    if self.parameterization == "eps":
      return raw(u, t)
    if self.parameterization != "skip":
      raise UsageError(f"parameterization must be 'eps' or 'skip', got "
                       f"{self.parameterization!r}")
    lam = self.logsnr(jnp.asarray(t, u.dtype))[..., None]
    return jnp.sqrt(jax.nn.sigmoid(-lam)) * u + jnp.sqrt(jax.nn.sigmoid(lam)) * raw(u, t)

  def ode_interval(self):
    # The ODE variable is lambda: du/dlambda has bounded coefficients, while
    # dlambda/dt blows up at both ends of the cosine schedule (a stiff ODE in t).
    return self.logsnr_max, self.logsnr_min

  def ode_velocity(self, net, u, lam):
    """du/dlambda = (sigma^2 u - sigma eps(u, t(lambda))) / 2 (see the module doc)."""
    var = jax.nn.sigmoid(-lam)  # sigma^2
    eps = net(u, self.time_of_logsnr(lam))
    return 0.5 * (var * u - jnp.sqrt(var) * eps)

  def training_pairs(self, u: Array, rng: Array) -> tuple[Array, Array, Array]:
    """(u_t, t, target) for data u in standardised units: eps(u_t, t) ~ target."""
    noise_rng, t_rng = jax.random.split(rng)
    eps = jax.random.normal(noise_rng, u.shape, u.dtype)
    if self.time_sampling == "cosine":
      t = stratified(t_rng, u)
    elif self.time_sampling == "logsnr":
      lam = self.logsnr_max - (self.logsnr_max - self.logsnr_min) * stratified(t_rng, u)
      t = self.time_of_logsnr(lam)
    else:
      raise UsageError(f"time_sampling must be 'cosine' or 'logsnr', got "
                       f"{self.time_sampling!r}")
    lam = self.logsnr(t)[:, None]
    alpha, sigma = jnp.sqrt(jax.nn.sigmoid(lam)), jnp.sqrt(jax.nn.sigmoid(-lam))
    ut = alpha * u + sigma * eps
    target = eps
    if self.stable_target and not self.is_initializing():  # see FlowMatching
      w = posterior_weights(ut, alpha, u, sigma)
      target = eps + alpha * (u - w @ u) / sigma
    return ut, t, target

  def sample(self, rng: Array, n: int) -> Array:
    """Ancestral sampling: num_sampling_steps DDPM steps from t = 1 to t = 0."""
    return self.sample_with(self._pure_net(jnp.zeros((1, 2))), rng, n)

  def sample_with(self, net, rng: Array, n: int) -> Array:
    init_rng, rng = jax.random.split(rng)
    z = jax.random.normal(init_rng, (n, 2))
    k = int(self.num_sampling_steps)
    times = jnp.linspace(1.0, 0.0, k + 1)

    def step(u, inp):
      i, t, s = inp
      lam_t, lam_s = self.logsnr(t), self.logsnr(s)
      abar_t, abar_s = jax.nn.sigmoid(lam_t), jax.nn.sigmoid(lam_s)
      var_t, var_s = jax.nn.sigmoid(-lam_t), jax.nn.sigmoid(-lam_s)
      alpha2 = abar_t / abar_s  # alpha_{t|s}^2
      beta = -jnp.expm1(lam_t - lam_s) * var_t  # 1 - alpha_{t|s}^2, stably
      eps = net(u, t)
      mean = (u - beta / jnp.sqrt(var_t) * eps) / jnp.sqrt(alpha2)
      post_var = beta * var_s / var_t
      noise = jax.random.normal(jax.random.fold_in(rng, i), u.shape, u.dtype)
      u = mean + jnp.where(i < k - 1, jnp.sqrt(post_var), 0.0) * noise
      return u, None

    u, _ = jax.lax.scan(step, z, (jnp.arange(k), times[:-1], times[1:]))
    return self.from_unit(u)


def _unit(**model):
  """A time-dependent field, exact likelihood by the ODE. Each sample costs an
  ODE solve (flow matching) or a network pass per step (diffusion's ancestral
  sampling): the yardstick uses 100,000."""
  u = base.density_unit(num_steps=20_000, learning_rate=2e-3, **model)
  u.optimizer.warmup_steps = 200
  u.num_samples = 100_000
  u.figure_cells_per_degree = 1  # an ODE solve per point
  return u


SMALL_FIELD = dict(hidden=16, depth=2, num_frequencies=4, time_frequencies=2,
                   num_ode_steps=4)

FLOW_MATCHING = base.ModelCard(
    "flow_matching", FlowMatching, "tractable", "continuous normalizing flow",
    "flow matching (continuous flow)", chapter=8, unit=_unit,
    smoke=lambda u: u.model.update(SMALL_FIELD), groups=("taxonomy",))
DIFFUSION = base.ModelCard(
    "diffusion", Diffusion, "approximate", "diffusion",
    "diffusion (DDPM, probability-flow ODE)", chapter=8,
    unit=lambda: _unit(num_sampling_steps=250),
    smoke=lambda u: u.model.update(SMALL_FIELD, num_sampling_steps=10),
    groups=("taxonomy",))
