"""The one contract: model cards, errors that tell the truth, refused starts that change nothing.

* A model defined here, in the test file, with its card and one
  ``register`` call, is trained by the density experiment and appears in
  report.md under its display name, family and branch; a card without a
  branch is refused, and an unknown name is an error, never "tractable".
* A density that does not integrate to one "beats the truth": the run fails
  naming the model.
* An unexpected exception inside training is a bug: traceback, exit 1. Bad
  input is one line, exit 2, and a refused start leaves the workdir byte for
  byte as it was (or absent).
* A config mismatch names the differing fields with their values; a config
  typo is plain text with the suggestion; a resumed run says so.
"""

import hashlib
import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genmodels import models
from genmodels.density import config as density_config
from genmodels.density import report as density_report
from genmodels.errors import UsageError
from genmodels.models import base
from genmodels.training import experiment

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DENSITY = [sys.executable, os.path.join(REPO, "experiments", "density_mle.py"),
           "--config=genmodels/density/config.py:smoke", "--nofigures", "--noprogress"]


class LandBoxGaussian(base.DensityModel):
  """A diagonal Gaussian with a learnt mean and log scale; ``offset`` is added
  to log p (0: a normalised density; > 0: one that integrates to e^offset)."""
  offset: float = 0.0

  @nn.compact
  def __call__(self):
    mean = self.param("mean", nn.initializers.zeros, (2,))
    log_scale = self.param("log_scale", lambda k, s: jnp.log(jnp.array([60.0, 30.0])),
                           (2,))
    return mean, log_scale

  def log_prob(self, x):
    mean, log_scale = self()
    z = (x - mean) / jnp.exp(log_scale)
    return (jnp.sum(-0.5 * z ** 2 - log_scale - 0.5 * np.log(2 * np.pi), axis=-1)
            + self.offset)

  def sample(self, rng, n):
    mean, log_scale = self()
    return mean + jnp.exp(log_scale) * jax.random.normal(rng, (n, 2))


def _card(name, offset=0.0, **overrides):
  fields = dict(
      name=name, build=lambda **kw: LandBoxGaussian(**{"offset": offset, **kw}),
      branch="tractable", family="test family", display=f"Test Gaussian {name}",
      chapter=2,
      unit=lambda: base.density_unit(num_steps=20, learning_rate=1e-2))
  fields.update(overrides)
  return base.ModelCard(**fields)


@pytest.fixture
def registered():
  added = []

  def add(card):
    models.register(card)
    added.append(card.name)
    return card

  yield add
  for name in added:
    models.unregister(name)


def _smoke_config(name):
  config = density_config.smoke()
  config.models[name] = models.card(name).unit()
  config.model = f"gmm,{name}"
  return config


def test_a_model_defined_in_a_test_appears_in_the_report(registered, tmp_path):
  registered(_card("test_gauss"))
  config = _smoke_config("test_gauss")
  from genmodels import density  # pylint: disable=g-import-not-at-top
  results = experiment.run(density, config, str(tmp_path),
                           experiment.Options(progress=False, figures=True))
  assert set(results["models"]) == {"gmm", "test_gauss"}
  assert np.isfinite(results["models"]["test_gauss"]["kl_to_truth"])
  report = (tmp_path / "report.md").read_text()
  assert "Test Gaussian test_gauss (`test_gauss`)" in report
  assert "test family, ch. 2" in report
  row = next(line for line in report.splitlines() if "`test_gauss`" in line
             and line.startswith("|"))
  assert row.startswith("| tractable | Test Gaussian test_gauss")


def test_a_card_without_a_branch_is_refused():
  for bad in ("", "explicit", None):
    with pytest.raises(ValueError, match="branch"):
      _card("nobranch", branch=bad)
  with pytest.raises(UsageError, match="unknown density model 'no_such_model'"):
    models.card("no_such_model")
  with pytest.raises(UsageError):
    density_report.branch("no_such_model")


def test_a_name_registered_twice_is_refused(registered):
  registered(_card("twice"))
  with pytest.raises(ValueError, match="registered already"):
    models.register(_card("twice"))


def test_every_card_declares_its_branch_family_and_unit():
  for name, card in models.cards().items():
    assert card.branch in base.BRANCHES, name
    assert card.display and card.family, name
    fields = density_config.base().models[name].model.to_dict()
    assert isinstance(card.make(**fields), base.DensityModel), name
    assert fields.keys() >= set(card.default_fields()), name
  assert models.card("gan").branch == "implicit"
  assert not models.get_density_model("gan").has_density
  assert models.get_density_model("vae").log_prob_is_bound


def test_a_density_that_beats_the_truth_fails_the_run_naming_it(registered, tmp_path):
  # log p + 1 integrates to e: its "KL" is about 1 nat below what it should be.
  registered(_card("cheater", offset=3.0))
  config = _smoke_config("cheater")
  config.model = "cheater"
  from genmodels import density  # pylint: disable=g-import-not-at-top
  with pytest.raises(density_report.ImpossibleResult, match="model 'cheater'.*below zero"):
    experiment.run(density, config, str(tmp_path),
                   experiment.Options(progress=False, figures=False))


def test_check_kl_allows_noise_around_zero():
  density_report.check_kl("m", -0.002, 0.001)  # within 4 SE + 1e-3
  density_report.check_kl("m", float("inf"), 0.0)
  with pytest.raises(density_report.ImpossibleResult):
    density_report.check_kl("m", -0.01, 0.001)


# ------------------------------------------------------------ processes

def _tree(folder) -> dict:
  """Every file and folder under ``folder``: relative path -> (mode, sha256)."""
  out = {}
  for root, dirs, files in os.walk(folder):
    for name in dirs + files:
      path = os.path.join(root, name)
      st = os.lstat(path)
      digest = (hashlib.sha256(open(path, "rb").read()).hexdigest()
                if os.path.isfile(path) else None)
      out[os.path.relpath(path, folder)] = (st.st_mode, st.st_size, st.st_mtime_ns,
                                            digest)
  return out


def _run(args, **kwargs):
  return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300,
                        **kwargs)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("contract") / "run"
  args = DENSITY + ["--model=gmm", f"--workdir={workdir}",
                    "--config.models.gmm.train.num_steps=20"]
  first = _run(args)
  assert first.returncode == 0, first.stderr
  return workdir, args


def test_a_rerun_says_it_resumed(finished_run):
  _, args = finished_run
  again = _run(args)
  assert again.returncode == 0, again.stderr
  assert "resumed from step 20" in again.stderr.splitlines()


@pytest.mark.parametrize("extra, message", [
    (["--config.models.gmm.optimizer.learning_rate=0.02"],
     "models.gmm.optimizer.learning_rate: 0.01 -> 0.02"),
    (["--config.models.gmm.train.num_steps=100", "--overwrite", "--num_devices=3"],
     "num_devices=3"),
    (["--config.num_train=0"], "num_train must be a positive number"),
])
def test_a_refused_start_leaves_the_workdir_as_it_was(finished_run, extra, message):
  workdir, args = finished_run
  before = _tree(workdir)
  args = [a for a in args if not a.startswith("--config.models.gmm.train")] + extra
  if not any(a.startswith("--config.models.gmm.train") for a in extra):
    args.append("--config.models.gmm.train.num_steps=20")
  out = _run(args)
  assert out.returncode == 2, out.stderr
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
  assert _tree(workdir) == before


def test_a_refused_start_in_a_new_workdir_leaves_none(tmp_path):
  workdir = tmp_path / "never"
  out = _run(DENSITY + ["--model=gmm", f"--workdir={workdir}",
                        "--config.models.gmm.optimizer.learning_rate=-1"])
  assert out.returncode == 2 and "learning_rate" in out.stderr
  assert not workdir.exists()


def test_a_config_typo_is_plain_text_with_the_suggestion(tmp_path):
  out = _run(DENSITY + [f"--workdir={tmp_path / 'w'}",
                        "--config.models.gmm.model.num_componets=3"])
  assert out.returncode == 2
  line = out.stderr.strip()
  assert "\\" not in line and "\n" not in line
  assert 'Did you mean "num_components"' in line and "num_componets" in line


def test_an_unexpected_exception_in_training_is_a_traceback_and_status_1(tmp_path):
  """A bug (here a ZeroDivisionError in the loss, injected) is not bad input."""
  script = tmp_path / "buggy.py"
  script.write_text(textwrap.dedent(f"""
      import runpy, sys
      from genmodels.density import task
      def broken_loss(model):
        def loss_fn(variables, batch, rng, train):
          raise ZeroDivisionError("injected bug in the loss")
        return loss_fn
      task.density_loss = broken_loss
      sys.argv = {DENSITY[1:]!r} + ["--model=gmm", "--workdir={tmp_path / 'w'}"]
      runpy.run_path(sys.argv[0], run_name="__main__")
  """))
  out = _run([sys.executable, str(script)])
  assert out.returncode == 1, out.stderr
  assert "Traceback (most recent call last)" in out.stderr
  assert "ZeroDivisionError: injected bug in the loss" in out.stderr
  assert "error: " not in out.stderr.splitlines()[-1]


def test_the_contract_leaves_no_capability_probe():
  """No ``hasattr``/``getattr`` probe of a model's capabilities in the library."""
  capabilities = ("training_loss", "eval_metrics", "diagnostics", "has_density",
                  "log_prob_is_bound", "cache_normalizers", "num_free_params",
                  "trains_by_nll")
  offenders = []
  for root, _, files in os.walk(os.path.join(REPO, "genmodels")):
    for name in (f for f in files if f.endswith(".py")):
      for line in open(os.path.join(root, name)):
        if ("hasattr(" in line or "getattr(" in line) and any(
            f'"{c}"' in line for c in capabilities):
          offenders.append(f"{name}: {line.strip()}")
  assert not offenders


def test_load_density_on_a_workdir_without_densities_says_what_it_holds(tmp_path):
  import json  # pylint: disable=g-import-not-at-top
  import genmodels  # pylint: disable=g-import-not-at-top
  (tmp_path / "results.json").write_text(json.dumps({"test_accuracy": 0.9}))
  with pytest.raises(UsageError, match="not a density workdir.*test_accuracy"):
    genmodels.load_density(str(tmp_path))
  (tmp_path / "results.json").write_text(json.dumps({"models": {"gan": {
      "validation_nll": None}}}))
  with pytest.raises(UsageError, match=r"only models without a density \(gan.*"
                     r"load_density\(.*'gan'\)"):
    genmodels.load_density(str(tmp_path))
  (tmp_path / "results.json").write_text("{garbage")
  with pytest.raises(UsageError, match="cannot read"):
    genmodels.load_density(str(tmp_path))


def test_the_readme_add_a_model_example_trains_and_reports(tmp_path):
  """The README's "Add a model" code, as written there, registers and trains."""
  readme = open(os.path.join(REPO, "README.md")).read()
  start = readme.index("# genmodels/models/laplace.py")
  code = readme[start:readme.index("```", start)]
  namespace = {}
  exec(compile(code, "README.md", "exec"), namespace)  # pylint: disable=exec-used
  card = namespace["LAPLACE"]
  models.register(card)
  try:
    config = density_config.smoke()
    config.model = "laplace"
    config.models.laplace.train.num_steps = 20
    from genmodels import density  # pylint: disable=g-import-not-at-top
    density.check(config)
    results = experiment.run(density, config, str(tmp_path),
                             experiment.Options(progress=False, figures=False))
    row = results["models"]["laplace"]
    assert 0 < row["kl_to_truth"] < 5 and row["num_params"] == 4
  finally:
    models.unregister("laplace")


def test_a_garbage_config_json_is_called_unreadable_not_different(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text("{garbage")
  before = _tree(workdir)
  out = _run(DENSITY + ["--model=gmm", f"--workdir={workdir}"])
  assert out.returncode == 2
  line = out.stderr.strip()
  assert "unreadable" in line and "restore the file to resume" in line, line
  assert "different config" not in line
  assert _tree(workdir) == before
