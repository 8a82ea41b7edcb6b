"""genmodels: chapters 1 and 2 of *Generative Deep Learning*, in JAX.

The public entry point for trained density models:

  import genmodels
  model = genmodels.load_density("/tmp/density")  # best by validation NLL
  model.log_prob(points_Nx2)                        # (longitude, latitude), degrees
  model.sample(jax.random.key(0), 1000)
"""

__version__ = "0.1.0"


def load_density(workdir: str, name: str | None = None):
  """A trained density model from a density workdir (see density.trained.load_density)."""
  from genmodels.density import trained  # pylint: disable=g-import-not-at-top
  return trained.load_density(workdir, name)
