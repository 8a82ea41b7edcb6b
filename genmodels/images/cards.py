"""The image experiment's models by name: one card per model, in run order.

A card (``genmodels.models.base.ModelCard``) says how to build the model, its
branch of chapter 1's taxonomy, family, chapter and default config unit; the
config, the task and the report read everything about a model from here. A new
image model is one module with its ``CARD`` and one line below.
"""

from __future__ import annotations

from genmodels.errors import UsageError
from genmodels.images import flow
from genmodels.images import models
from genmodels.images import pixelcnn
from genmodels.images import vae
from genmodels.models import base

IMAGE_CARDS: dict[str, base.ModelCard] = {}


def register(card: base.ModelCard) -> base.ModelCard:
  if card.name in IMAGE_CARDS:
    raise UsageError(f"image model {card.name!r} is registered twice")
  IMAGE_CARDS[card.name] = card
  return card


register(models.INDEPENDENT_PIXELS)
register(models.PIXEL_MIXTURE)
register(pixelcnn.CARD)
register(flow.CARD)
register(vae.CARD)


def names() -> list[str]:
  return list(IMAGE_CARDS)


def card(name: str) -> base.ModelCard:
  if name not in IMAGE_CARDS:
    raise UsageError(f"unknown image model {name!r}; valid: {', '.join(IMAGE_CARDS)}")
  return IMAGE_CARDS[name]


def get_model(name: str, num_levels: int, image_shape: tuple[int, int, int] | None = None,
              **fields_) -> base.DensityModel:
  """The module of image model ``name`` over ``num_levels`` grey levels.

  ``image_shape`` (H, W, C) is set on the models whose card lists it in
  ``fixed`` (a network that samples needs the shape; the per-pixel tables
  take it from the data they start from)."""
  c = card(name)
  if "image_shape" in c.fixed:
    if image_shape is None:
      raise UsageError(f"image model {name!r} needs image_shape=(H, W, C)")
    fields_["image_shape"] = tuple(int(d) for d in image_shape)
  try:
    return c.make(num_levels=num_levels, **fields_)
  except TypeError as e:  # an unknown attribute: name the valid ones
    raise UsageError(f"image model {name!r}: {e}; its fields: "
                     f"{', '.join(c.default_fields()) or '(none)'}") from None
