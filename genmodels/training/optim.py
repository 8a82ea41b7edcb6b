"""The one optimizer factory: Adam or AdamW, a schedule, optional clipping.

Every experiment describes its optimizer with an ``optimizer`` config block:

    name          "adam" or "adamw" (decoupled weight decay, times the rate)
    learning_rate the peak rate
    schedule      "constant", "warmup_cosine" (linear warm-up from 0 over
                  ``warmup_steps``, capped at half the run, then cosine decay
                  to ``learning_rate * end_factor``) or "onecycle" (rises over
                  ``warmup_fraction`` of the run from rate / ``div_factor``,
                  falls to rate / (div_factor * ``final_div_factor``))
    weight_decay  AdamW's decay (ignored by "adam")
    grad_clip     clip the global gradient norm to this value (0: no clipping)

``DEFAULTS`` lists every field; a block names only what differs. A block of
blocks, one per top-level part of the parameters, gives each part its own
optimizer (see ``make``).
"""

import ml_collections
import optax

from genmodels.errors import UsageError

OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "warmup_cosine", "onecycle")

DEFAULTS = dict(name="adam", learning_rate=1e-3, schedule="constant",
                warmup_steps=100, end_factor=0.01, warmup_fraction=0.15,
                div_factor=10.0, final_div_factor=100.0, weight_decay=0.0,
                grad_clip=0.0)


def block(what: str, defaults: dict, overrides: dict) -> ml_collections.ConfigDict:
  """A full config block: ``defaults`` with ``overrides`` (all of them known fields)."""
  unknown = set(overrides) - set(defaults)
  if unknown:
    raise UsageError(f"unknown {what} fields {sorted(unknown)}; valid: "
                     f"{', '.join(defaults)}")
  return ml_collections.ConfigDict({**defaults, **overrides})


def optimizer_config(**overrides) -> ml_collections.ConfigDict:
  """A full ``optimizer`` block: ``DEFAULTS`` with ``overrides``."""
  return block("optimizer", DEFAULTS, overrides)


def check(cfg) -> None:
  """Raises a one-line ValueError for a block the factory cannot build."""
  if per_part(cfg):
    for part, block in cfg.items():
      try:
        check(block)
      except (ValueError, AttributeError, KeyError) as e:
        raise UsageError(f"optimizer.{part}: {e}") from None
    return
  if cfg.name not in OPTIMIZERS:
    raise UsageError(f"unknown optimizer {cfg.name!r}; valid: {', '.join(OPTIMIZERS)}")
  if cfg.schedule not in SCHEDULES:
    raise UsageError(f"unknown schedule {cfg.schedule!r}; valid: {', '.join(SCHEDULES)}")
  if not 0 < cfg.learning_rate < float("inf"):
    raise UsageError(f"learning_rate must be a positive number, got {cfg.learning_rate}")
  for key in ("weight_decay", "grad_clip", "warmup_steps", "end_factor"):
    if not 0 <= cfg[key] < float("inf"):
      raise UsageError(f"{key} must be >= 0, got {cfg[key]}")
  if not 0 < cfg.warmup_fraction < 1:
    raise UsageError(f"warmup_fraction must be in (0, 1), got {cfg.warmup_fraction}")
  for key in ("div_factor", "final_div_factor"):
    if not 0 < cfg[key] < float("inf"):
      raise UsageError(f"{key} must be positive, got {cfg[key]}")


def schedule(cfg, num_steps: int):
  """The learning rate: a float, or an optax schedule over ``num_steps`` steps."""
  lr = cfg.learning_rate
  if cfg.schedule == "constant":
    return lr
  if cfg.schedule == "warmup_cosine":
    steps = max(int(num_steps), 1)
    warmup = min(int(cfg.warmup_steps), steps // 2)
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, steps,
                                              end_value=lr * cfg.end_factor)
  if cfg.schedule == "onecycle":
    return optax.cosine_onecycle_schedule(
        int(num_steps), lr, pct_start=cfg.warmup_fraction,
        div_factor=cfg.div_factor, final_div_factor=cfg.final_div_factor)
  raise UsageError(f"unknown schedule {cfg.schedule!r}; valid: {', '.join(SCHEDULES)}")


def per_part(cfg) -> bool:
  """True for a block of blocks, one per top-level part of the parameters."""
  return "name" not in cfg


def make(cfg, num_steps: int) -> optax.GradientTransformation:
  """The optimizer of an ``optimizer`` block for a run of ``num_steps`` steps.

  A block of blocks, ``{part: block}``, gives each top-level part of the
  parameters its own optimizer (a GAN's generator and discriminator):
  ``optax.multi_transform`` over the parts.
  """
  if per_part(cfg):
    txs = {part: make(block, num_steps) for part, block in cfg.items()}
    return optax.multi_transform(txs, lambda params: {k: k for k in params})
  check(cfg)
  lr = schedule(cfg, num_steps)
  if cfg.name == "adamw":
    tx = optax.adamw(lr, weight_decay=cfg.weight_decay)
  else:
    tx = optax.adam(lr)
  if cfg.grad_clip:
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx)
  return tx
