"""Variational autoencoder (chapter 3): an approximate density on the world map.

A latent z ~ p(z) = N(0, I) and a decoder p(x | z) define the marginal

    p(x) = integral p(z) p(x | z) dz,

which has no closed form. An encoder q(z | x) makes it tractable twice over:

* the ELBO, E_q[log p(x, z) - log q(z | x)] <= log p(x), is the training
  objective (``training_loss`` = -ELBO, one reparameterised sample z = mu +
  L eps per point and the Gaussian KL(q || p(z)) in closed form);
* the importance-weighted (IWAE) bound with K samples,

      L_K(x) = log (1/K) sum_k p(x, z_k) / q(z_k | x),   z_k ~ q(z | x),

  is what ``log_prob`` reports. L_1 is the ELBO, E[L_K] rises with K and tends
  to log p(x) as K grows. It is still a *lower* bound on log p(x), so the held-out
  "NLL - entropy" the engine reports is an *upper* bound on KL(p_data || p_model):
  the model is at least that good. ``log_prob`` uses a fixed internal key, so it
  is a deterministic function of the parameters.

Design (measured on the world map, 100,000 points, 2 shared CPU cores):

* **A 2-D latent.** The data are a 2-D density, so two latent dimensions are
  enough for the decoder to be a (folded, noisy) map of the latent plane onto the
  land, and q(z | x) of a near-deterministic decoder is then nearly a point mass
  that a Gaussian describes well. Extra latent dimensions carry no information
  about a 2-D point; the ELBO pays for them with posteriors that are close to the
  prior in those directions but not exactly (a looser bound, and more importance
  samples for the same accuracy). ``latent_dim`` can be raised.
* **Start at the identity; the posterior collapses otherwise.** Inputs are
  standardised to u = (x - centre) / half-width in [-1, 1]^2. The decoder's mean
  is t = erf(z / sqrt 2) (the prior mapped uniformly onto the box) plus learned
  warps whose last layers start at zero, and the encoder's mean is its inverse
  sqrt(2) erfinv(u) plus a correction that starts at zero; both Gaussians start
  narrow (``encoder_init_scale``, ``decoder_init_scale``). A fresh VAE is thus a
  sharp autoencoder whose marginal is nearly the uniform box. From a standard
  initialisation the decoder instead explained the data as one wide Gaussian,
  KL(q || p) fell to 0 and stayed there (held-out KL 1.41 nats after 8,000 steps).
* **Fourier features and residual warps.** The encoder sees [u, sin(pi k u),
  cos(pi k u)], k = 1..num_frequencies. The decoder warps t in ``decoder_blocks``
  residual steps, each an MLP on the Fourier features of the point it moves
  (re-taking the features of the warped point sharpens the map where a step
  stretches space, as a flow's layers do); the features of t resolve every part
  of the prior's mass equally. Three blocks of two layers scored a little better
  than one block of four at the same cost.
* **Full-covariance Gaussians on both sides** (a lower-triangular Cholesky
  factor, 3 numbers in 2-D), so each latent point can emit an ellipse along a
  coastline and q can follow the decoder's shear.
* **Width 128 rather than 256**: about three times the steps in the same time,
  which mattered more than width (more steps kept helping up to the 3-minute
  budget).

``LinearGaussianVAE`` (a linear decoder with isotropic Gaussian noise and an
affine encoder with a constant covariance) is the one VAE whose marginal is known:
p(u) = N(u; b, W W^T + sigma^2 I). Its exact posterior is in the encoder's family,
which the tests use to check the bounds.
"""

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from genmodels.errors import UsageError
from genmodels.models import base
from genmodels.models import fields
from genmodels.models.vae_networks import (Decoder, Encoder, LinearDecoder,
                                           LinearEncoder)
from genmodels.numerics import coords
from genmodels.numerics.gaussians import (gaussian_log_prob, gaussian_sample,
                                          kl_to_standard_normal, softplus_inverse)

Array = jax.Array


class VAE(base.DensityModel):
  """A VAE on (lon, lat) points; ``log_prob`` is the IWAE bound with K samples.

  Attributes:
    lo, hi: the data box; inputs are standardised to u in [-1, 1]^2 by it (the
      density is not restricted to the box: samples may fall just outside).
    latent_dim: dimension of z (prior N(0, I)).
    hidden: width of both MLPs.
    encoder_depth: hidden layers of the encoder.
    decoder_blocks, decoder_depth: the decoder's residual warps and the hidden
      layers of each (see ``Decoder``).
    num_frequencies: Fourier frequencies of u in the encoder.
    latent_frequencies: Fourier frequencies of erf(z / sqrt 2) in the decoder.
    full_covariance: full (Cholesky) rather than diagonal covariances for both
      q(z | x) and p(x | z).
    min_scale: floor of both Gaussians' Cholesky diagonals (normalised units).
    encoder_init_scale, decoder_init_scale: q(z | x)'s and p(x | z)'s standard
      deviations at initialisation, the same for every input (latent and
      normalised units): a narrow start, see the module docstring.
    iwae_samples: K, importance samples of ``log_prob``. On the trained world-map
      VAE, doubling K from 128 to 256 raised the held-out bound by 0.0010 nats
      and from 256 to 512 by 0.0005.
    iwae_chunk: samples evaluated at once (memory: chunk x points x hidden).
  """
  trains_by_nll = False  # trains on its own training_loss
  log_prob_is_bound = True  # IWAE: log_prob <= log p(x), so the KL is an upper bound

  lo: Sequence[float] = (-180.0, -90.0)
  hi: Sequence[float] = (180.0, 90.0)
  latent_dim: int = 2
  hidden: int = 128
  encoder_depth: int = 3
  decoder_depth: int = 2
  decoder_blocks: int = 3
  num_frequencies: int = 16
  latent_frequencies: int = 16
  full_covariance: bool = True
  min_scale: float = 1e-3
  encoder_init_scale: float = 0.05
  decoder_init_scale: float = 0.02
  iwae_samples: int = 256
  iwae_chunk: int = 32

  def setup(self):
    fields.require(self, positive=("latent_dim", "hidden", "decoder_blocks",
                                   "iwae_samples", "iwae_chunk"),
                   nonnegative=("encoder_depth", "decoder_depth", "num_frequencies",
                                "latent_frequencies"), box=True)
    self.encoder = Encoder(self.latent_dim, self.hidden, self.encoder_depth,
                           self.num_frequencies, self.full_covariance,
                           self.min_scale, self.encoder_init_scale)
    self.decoder = Decoder(len(self.lo), self.hidden, self.decoder_depth,
                           self.decoder_blocks, self.latent_frequencies,
                           self.full_covariance, self.min_scale,
                           self.decoder_init_scale)

  # Standardisation: u = (x - centre) / half-width, log|du/dx| = -sum log half-width.
  @property
  def affine(self) -> coords.Affine:
    return coords.Affine.centred(self.lo, self.hi)

  def to_unit(self, x: Array) -> Array:
    return self.affine.to_unit(x)

  def from_unit(self, u: Array) -> Array:
    return self.affine.from_unit(u)

  def log_jacobian(self) -> float:
    return -self.affine.log_det

  def __call__(self, x: Array) -> Array:
    return self.log_prob(x)

  def log_weights(self, x: Array, rng: Array, num_samples: int) -> Array:
    """log p(x, z_k) - log q(z_k | x) for z_k ~ q(z | x): [num_samples, N], in x units.

    Evaluated ``iwae_chunk`` samples at a time (a scan), so memory does not grow
    with num_samples; every chunk draws from fold_in(rng, chunk index).
    """
    u = self.to_unit(x)
    q_mean, q_chol = self.encoder(u)
    chunk = max(1, min(int(self.iwae_chunk), int(num_samples)))
    num_chunks = -(-int(num_samples) // chunk)

    # The decoder runs inside lax.map, a JAX transform, so it is applied
    # functionally to its parameters (a detached clone of the bound submodule).
    if self.is_initializing():
      self.decoder(q_mean)
    decoder = self.decoder.clone(parent=None)
    decoder_params = self.decoder.variables["params"]

    def one_chunk(i):
      z = gaussian_sample(jax.random.fold_in(rng, i), q_mean, q_chol, (chunk,))
      p_mean, p_chol = decoder.apply({"params": decoder_params}, z)
      log_prior = jnp.sum(jax.scipy.stats.norm.logpdf(z), -1)
      return (log_prior + gaussian_log_prob(u, p_mean, p_chol)
              - gaussian_log_prob(z, q_mean, q_chol))

    out = jax.lax.map(one_chunk, jnp.arange(num_chunks))
    out = out.reshape(num_chunks * chunk, -1)
    # Infinite or huge points (``coords.FAR``): weight 0 (log -inf), not the
    # NaN the networks' float32 arithmetic makes of them.
    return coords.mask_log_prob(x, out[:num_samples] + self.log_jacobian(),
                                affine=self.affine)

  def iwae_bound(self, x: Array, num_samples: int, rng: Array | None = None) -> Array:
    """L_K(x) per point [N]: logsumexp of K log-weights minus log K."""
    rng = jax.random.key(0) if rng is None else rng
    log_w = self.log_weights(x, rng, num_samples)
    return jax.nn.logsumexp(log_w, 0) - jnp.log(float(num_samples))

  def log_prob(self, x: Array) -> Array:
    """The IWAE bound with ``iwae_samples`` samples (fixed key): <= log p(x)."""
    return self.iwae_bound(x, int(self.iwae_samples))

  def eval_metrics(self, x: Array) -> dict[str, Array]:
    """Held-out columns from one set of K log-weights: the IWAE bound's NLL
    ("nll", what ``log_prob`` gives) and the ELBO's ("elbo_nll" >= "nll")."""
    k = int(self.iwae_samples)
    log_w = self.log_weights(x, jax.random.key(0), k)
    return {"nll": jnp.log(float(k)) - jax.nn.logsumexp(log_w, 0),
            "elbo_nll": -jnp.mean(log_w, 0)}

  def diagnostics(self, x: Array) -> dict[str, Array]:
    """Is K large enough? The mean IWAE bound at 2K minus that at K (nats, >= 0
    in expectation), on the points x."""
    k = int(self.iwae_samples)
    bound_k = jnp.mean(self.iwae_bound(x, k, jax.random.key(1)))
    bound_2k = jnp.mean(self.iwae_bound(x, 2 * k, jax.random.key(2)))
    return {"iwae_samples": jnp.asarray(k), "iwae_doubling_gain": bound_2k - bound_k}

  def elbo(self, x: Array, num_samples: int | None = None,
           rng: Array | None = None) -> Array:
    """Monte Carlo ELBO per point [N]: the mean of the log-weights.

    With the defaults it averages the same K draws ``log_prob`` takes the
    logsumexp of, so elbo(x) <= log_prob(x) holds point by point (Jensen).
    """
    rng = jax.random.key(0) if rng is None else rng
    k = int(self.iwae_samples if num_samples is None else num_samples)
    return jnp.mean(self.log_weights(x, rng, k), 0)

  def training_loss(self, x: Array, rng: Array) -> tuple[Array, dict]:
    """-ELBO of the batch (nats, x units): one reparameterised sample, analytic KL."""
    u = self.to_unit(x)
    q_mean, q_chol = self.encoder(u)
    z = gaussian_sample(rng, q_mean, q_chol)
    p_mean, p_chol = self.decoder(z)
    recon = gaussian_log_prob(u, p_mean, p_chol) + self.log_jacobian()
    kl = kl_to_standard_normal(q_mean, q_chol)
    elbo = jnp.mean(recon - kl)
    return -elbo, {"elbo": elbo, "reconstruction": jnp.mean(recon), "kl": jnp.mean(kl)}

  def sample(self, rng: Array, n: int) -> Array:
    """z ~ N(0, I), then x ~ p(x | z) (the decoder's noise included)."""
    z_rng, x_rng = jax.random.split(rng)
    z = jax.random.normal(z_rng, (n, self.latent_dim))
    p_mean, p_chol = self.decoder(z)
    return self.from_unit(gaussian_sample(x_rng, p_mean, p_chol))


class LinearGaussianVAE(VAE):
  """Linear decoder N(W z + b, sigma^2 I), affine encoder with constant covariance.

  Its marginal is closed form, p(u) = N(u; b, W W^T + sigma^2 I) (``marginal_log_prob``),
  and its exact posterior N(S W^T (u - b) / sigma^2, S), S = (I + W^T W / sigma^2)^-1,
  is in the encoder's family (``exact_posterior_params``).
  """

  def setup(self):
    self.encoder = LinearEncoder(self.latent_dim)
    self.decoder = LinearDecoder(len(self.lo))

  def marginal_log_prob(self, x: Array) -> Array:
    """log p(x) in closed form (x units)."""
    p = self.variables["params"]["decoder"]
    w, b = p["mean"]["kernel"].T, p["mean"]["bias"]  # W [D, d]
    sigma = jax.nn.softplus(p["scale"])
    cov = w @ w.T + sigma ** 2 * jnp.eye(w.shape[0])
    return (jax.scipy.stats.multivariate_normal.logpdf(self.to_unit(x), b, cov)
            + self.log_jacobian())


def exact_posterior_params(params: dict) -> dict:
  """A LinearGaussianVAE's params with the encoder set to the exact posterior."""
  dec = params["decoder"]
  w = np.asarray(dec["mean"]["kernel"], np.float64).T  # [D, d]
  b = np.asarray(dec["mean"]["bias"], np.float64)
  sigma2 = float(jax.nn.softplus(np.asarray(dec["scale"], np.float64))) ** 2
  d = w.shape[1]
  cov = np.linalg.inv(np.eye(d) + w.T @ w / sigma2)
  gain = cov @ w.T / sigma2  # mean = gain (u - b)
  chol = np.linalg.cholesky(cov)
  diag = np.diag(chol)
  raw_diag = np.array([softplus_inverse(v) for v in diag])
  rows, cols = np.tril_indices(d, -1)
  raw = np.concatenate([raw_diag, chol[rows, cols]])
  enc = {"mean": {"kernel": jnp.asarray(gain.T, jnp.float32),
                  "bias": jnp.asarray(-gain @ b, jnp.float32)},
         "scale": jnp.asarray(raw, jnp.float32)}
  return {**params, "encoder": enc}


def _unit():
  """Trained on the ELBO, scored by the IWAE bound (K = 256)."""
  u = base.density_unit(num_steps=30_000, learning_rate=2e-3, batch_size=512)
  u.optimizer.warmup_steps = 200
  u.figure_cells_per_degree = 1  # the bound costs K decoder passes per point
  return u


def _shrink(u):
  u.model.update(hidden=16, encoder_depth=1, decoder_depth=1, decoder_blocks=1,
                 num_frequencies=4, latent_frequencies=4, iwae_samples=8,
                 iwae_chunk=4)


VAE_CARD = base.ModelCard(
    "vae", VAE, "approximate", "VAE", "VAE (IWAE bound)", chapter=3, unit=_unit,
    smoke=_shrink, groups=("taxonomy",))
