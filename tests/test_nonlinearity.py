"""The nonlinearity experiment end to end: the MLP wins, the linear model cannot."""

import json
import os

import numpy as np
import pytest

from genmodels import nonlinearity
from genmodels.data import tabular
from genmodels.nonlinearity import config as nonlinearity_config
from genmodels.training import experiment


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("nonlinearity"))
  config = nonlinearity_config.get_config("smoke")
  return workdir, experiment.run(nonlinearity, config, workdir,
                                 experiment.Options(progress=False))


def test_mlp_beats_linear_by_a_clear_margin(smoke_run):
  """Smoke (seed 0) measured: linear 0.479 / 0.694 nats, MLP 0.816 / 0.423, Bayes 0.817 / 0.421."""
  workdir, results = smoke_run
  lin, mlp = results["models"]["linear"], results["models"]["mlp"]
  bayes = results["bayes"]
  # The linear model is stuck near the constant 1/2: NLL log 2, and accuracy
  # no better than chance (which side of 1/2 it falls on is noise).
  assert lin["test_nll"] > np.log(2) - 0.01
  assert lin["test_accuracy"] < 0.56
  assert 0.4 < lin["p_min"] <= lin["p_max"] < 0.6
  assert mlp["p_min"] < 0.1 and mlp["p_max"] > 0.9
  # The MLP gets close to the true probabilities.
  assert mlp["test_accuracy"] > bayes["accuracy"] - 0.03
  assert mlp["test_nll"] < bayes["nll"] + 0.03
  assert results["margin"]["test_accuracy"] > 0.25
  assert results["margin"]["test_nll"] > 0.2
  assert lin["num_params"] == mlp["num_params"]  # Only the activations differ.
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f)["margin"] == pytest.approx(results["margin"])
  for name in ("decision_surfaces", "probability_curves", "training"):
    assert os.path.getsize(os.path.join(workdir, "figures", f"{name}.png")) > 5000


def test_marginals_reported_near_half(smoke_run):
  rates = smoke_run[1]["marginal_subscription_rates_train"]
  for key in ("ml_engineer", "other_jobs", "many_visits", "few_visits"):
    assert abs(rates[key] - 0.5) < 0.05
  assert rates["ml_engineer_and_many_visits"] > 0.8


def test_format_table_states_the_margin(smoke_run):
  table = nonlinearity.table(smoke_run[1])
  assert "MLP - linear: accuracy +0.3" in table and "true probabilities" in table
  assert tabular.JOB_TITLES[0] == "ml_engineer"
