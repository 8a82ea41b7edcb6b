r"""Why activations: a linear model and an MLP on the subscription data.

Run (the default, well under a minute on 2 CPU cores):

  python experiments/nonlinearity.py --workdir=/tmp/nonlinearity

Expected (seed 0, 20,000 training and 10,000 test visitors), measured on 2
shared CPU cores in ~22 s; see genmodels/data/tabular.py for how the data are
made:

  model                         test accuracy   test NLL (nats)
  linear (3 layers, no act.)    0.414            0.694 (log 2 = 0.693)
  mlp (3 layers, relu)          0.812            0.430
  true probabilities (Bayes)    0.810            0.429

The MLP wins by 0.40 in accuracy and 0.26 nats in NLL. The linear model can do
no better than the constant 1/2, because neither feature predicts a
subscription on its own: its P(subscribe) stays within ~0.02 of 1/2 everywhere,
and its accuracy is chance, above or below 1/2 depending on which side noise
tips it (0.41 here, 0.48 in the smoke variant). Both models have the same
layers and 1,313 parameters; only the activations differ.

Variants (``--config=experiments/configs/nonlinearity.py:NAME``):
  smoke: small data and few steps, for tests (seconds).
"""

import ml_collections


def _model(**model):
  return ml_collections.ConfigDict(dict(
      model=model, num_steps=1500, batch_size=256, learning_rate=1e-2,
      warmup_steps=50, log_every=100, checkpoint_every=0, steps_per_dispatch=50))


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_train = 20_000
  c.num_test = 10_000
  c.models = ml_collections.ConfigDict({
      "linear": _model(hidden=(32, 32)),
      "mlp": _model(hidden=(32, 32), act="relu"),
  })
  if variant == "smoke":
    c.num_train, c.num_test = 4000, 4000
    for m in c.models.values():
      m.num_steps, m.log_every, m.steps_per_dispatch = 400, 50, 10
  elif variant:
    raise ValueError(f"unknown nonlinearity config variant {variant!r}; valid: smoke")
  return c
