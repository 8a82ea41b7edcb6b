"""genmodels: chapters 1 and 2 of *Generative Deep Learning*, in JAX.

The public entry point for trained density models:

  import genmodels
  model = genmodels.load_density("/tmp/density")  # best by validation NLL
  model.log_prob(points_Nx2)                        # (longitude, latitude), degrees
  model.sample(jax.random.key(0), 1000)

  images = genmodels.load_density("/tmp/image")      # an image workdir
  images.log_prob(uint8_images_NxHxWx1)             # nats; images.likelihood says
  images.sample(jax.random.key(0), 64)              # exact mass or a bound
"""

__version__ = "0.1.0"


def load_density(workdir: str, name: str | None = None):
  """A trained model from a density workdir (``density.trained.load_density``)
  or an image workdir (``images.trained.load_density``: integer images)."""
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  try:
    with open(os.path.join(workdir, "results.json")) as f:
      is_images = "num_levels" in json.load(f)
  except (OSError, ValueError, TypeError):
    is_images = False  # the density loader names what is wrong
  if is_images:
    from genmodels.images import trained as images_trained  # pylint: disable=g-import-not-at-top
    return images_trained.load_density(workdir, name)
  from genmodels.density import trained  # pylint: disable=g-import-not-at-top
  return trained.load_density(workdir, name)
