"""Bad input never reaches the user as a traceback: one line, exit status 2.

Every entry point under experiments/ runs with each class of bad input (unknown
names, non-positive sizes and rates, a batch larger than the data, unwritable
or mismatched workdirs, missing or corrupt data files, bad config variants and
overrides, unparsable flags, stray arguments), then with many random flag
values. Each run must end with exit status 2 (1 for a diverged run), exactly
one ``error:`` line on stderr and no traceback. Entry points that do not exist
yet are skipped; new ones are covered from their own flags, as listed by the
driver. ``GENMODELS_FUZZ_SEED`` picks other random flags.

Speed: a process that imports JAX, tfds and the world map costs seconds, so
one driver process imports them (for every entry point) once and forks a child
per run.
The child sets ``sys.argv`` and executes the script as ``__main__`` (the real
``cli.run`` path: flag definition, parsing, main, exit status, stdout and
stderr captured at the file-descriptor level). Where a run would start
training, ``loop.train`` is replaced by a stub that checks the loop config and
stops (status "train"): every check of user input happens before that. A few
cases also run as plain subprocesses to check the real interpreter exit.
"""

import atexit
import gzip
import json
import os
import pathlib
import random
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every experiment entry point under experiments/ (a script built on
# cli.define_experiment), found, not listed: a new one is covered as it lands.
ENTRY_POINTS = tuple(sorted(
    p.stem for p in pathlib.Path(REPO, "experiments").glob("*.py")
    if "cli.define_experiment(" in p.read_text()))
assert {"density_mle", "classify", "latent_space", "nonlinearity"} <= set(ENTRY_POINTS)
FASHION_DIR = "/usr/share/datasets/fashion-mnist"

# ------------------------------------------------------------------ driver

DRIVER = textwrap.dedent(r'''
    """Fork server: imports once, runs each case in a forked child."""
    import atexit, json, os, runpy, signal, sys, time, traceback
    repo, entries = sys.argv[1], sys.argv[2:]
    sys.path.insert(0, repo)
    import numpy as np
    import jax  # imported, never initialised here: children fork cleanly
    from absl import flags
    from genmodels import cli
    from genmodels.training import loop
    try:
      from genmodels.data import images
    except Exception:  # pylint: disable=broad-except
      images = None
    import ast, importlib
    for entry in entries:  # the scripts' imports, not their flags
      for node in ast.parse(open(entry).read()).body:
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [f"{node.module}.{a.name}" for a in node.names] + [node.module]
                 if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
        for name in names:
          try:
            importlib.import_module(name)
          except Exception:  # pylint: disable=broad-except
            pass  # an attribute, not a module
    if any("world_map" in open(entry).read() for entry in entries):
      from genmodels.data import world_map
      world_map.ocean_mask(); world_map.num_land_cells()

    class ReachedTraining(BaseException):
      """Raised by the loop.train stub: the input passed every check."""

    def stub_train(*, config, train_data, **unused):
      config.validate(len(next(iter(train_data.values()))))
      raise ReachedTraining()

    def fake_images(name, split, data_dir=None, manual_dir=None, limit=0):
      n = 300 if split.startswith("train") else 100
      n = min(n, limit) if limit else n
      rng = np.random.default_rng(0)
      return images.ImageData(rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),
                              rng.integers(0, 10, n).astype(np.int32), 10,
                              tuple(f"c{i}" for i in range(10)))

    def child(case, out_dir):
      fd_out = os.open(f"{out_dir}/stdout", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
      fd_err = os.open(f"{out_dir}/stderr", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
      os.dup2(fd_out, 1); os.dup2(fd_err, 2)
      entry = case["entry"]
      if not case.get("real_training"):
        loop.train = stub_train
      if case.get("fake_data") and images is not None:
        images.load_image_dataset = fake_images
      sys.argv = [entry] + case["argv"]
      code = 0
      try:
        if case.get("list_flags"):
          runpy.run_path(entry, run_name="genmodels_entry")
          info = {}
          for name in flags.FLAGS:
            fl = flags.FLAGS[name]
            mod = flags.FLAGS.find_module_defining_flag(name) or ""
            if mod in ("genmodels_entry", "genmodels.cli"):
              info[name] = {"type": fl.flag_type(), "default": fl.default_as_str}
          config = {}
          if "config" in info:
            flags.FLAGS([entry] + case["argv"])
            def walk(prefix, d):
              for k, v in d.items():
                if hasattr(v, "items"):
                  walk(f"{prefix}{k}.", v)
                elif isinstance(v, (bool, int, float, str)):
                  config[prefix + k] = {"type": type(v).__name__, "value": v}
            walk("", flags.FLAGS["config"].value)
          with open(f"{out_dir}/flags.json", "w") as f:
            json.dump({"flags": info, "config": config}, f)
        else:
          runpy.run_path(entry, run_name="__main__")
      except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
      except ReachedTraining:
        code = "train"
      except BaseException:  # what the interpreter would print
        traceback.print_exc()
        code = 1
      try:
        atexit._run_exitfuncs()
      except BaseException:
        traceback.print_exc()
      sys.stdout.flush(); sys.stderr.flush()
      with open(f"{out_dir}/code", "w") as f:
        f.write(json.dumps(code))
      os._exit(0)

    def run(cases, parallel=2):
      results, running, todo = {}, {}, list(cases)
      while todo or running:
        while todo and len(running) < parallel:
          case = todo.pop(0)
          os.makedirs(case["out"], exist_ok=True)
          sys.stdout.flush(); sys.stderr.flush()
          pid = os.fork()
          if pid == 0:
            child(case, case["out"])
          running[pid] = (case, time.monotonic() + case.get("timeout", 120), time.monotonic())
        for pid, (case, deadline, t0) in list(running.items()):
          done, _ = os.waitpid(pid, os.WNOHANG)
          if not done and time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL); os.waitpid(pid, 0); done = pid
            results[case["id"]] = {"code": "timeout"}
          if done:
            del running[pid]
            if case["id"] in results:
              continue
            read = lambda n: open(f"{case['out']}/{n}", errors="replace").read() \
                if os.path.exists(f"{case['out']}/{n}") else None
            results[case["id"]] = {"code": json.loads(read("code") or '"died"'),
                                   "stdout": read("stdout"), "stderr": read("stderr"),
                                   "flags": json.loads(read("flags.json") or "null"),
                                   "seconds": time.monotonic() - t0}
        time.sleep(0.02)
      return results

    for line in sys.stdin:
      print(json.dumps(run(json.loads(line))), flush=True)
''')


class Driver:
  """The fork server; ``run(cases)`` returns {case id: result}."""

  def __init__(self, tmp):
    self.tmp, self.n = tmp, 0
    path = tmp / "driver.py"
    path.write_text(DRIVER)
    entries = [_entry_path(n) for n in ENTRY_POINTS if os.path.exists(_entry_path(n))]
    self.proc = subprocess.Popen(
        [sys.executable, str(path), REPO, *entries], cwd=REPO, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        env=dict(os.environ, JAX_PLATFORMS="cpu", TQDM_DISABLE="1"))
    atexit.register(self.close)  # Even if no test uses it (-x, -k, Ctrl-C).

  def run(self, cases):
    for case in cases:
      self.n += 1
      case.setdefault("out", str(self.tmp / f"case{self.n}"))
    self.proc.stdin.write(json.dumps(cases) + "\n")
    self.proc.stdin.flush()
    line = self.proc.stdout.readline()
    assert line, "the driver died"
    return json.loads(line)

  def close(self):
    if self.proc.poll() is None:
      self.proc.stdin.close()
      try:
        self.proc.wait(timeout=60)
      except subprocess.TimeoutExpired:
        self.proc.kill()
        self.proc.wait()
    shutil.rmtree(self.tmp, ignore_errors=True)


def _entry_path(name):
  return os.path.join(REPO, "experiments", f"{name}.py")


_STARTED = []  # the driver, started at collection: its imports overlap other tests


def start_early(items):
  """conftest hook: start the driver if a selected test uses it."""
  if any("drivers" in getattr(item, "fixturenames", ()) for item in items):
    _STARTED.append(Driver(pathlib.Path(tempfile.mkdtemp(prefix="genmodels_driver_"))))


@pytest.fixture(scope="module")
def drivers():
  """name -> (driver, the entry point's flags, its config's fields, a tmp dir)."""
  made, state = {}, {}

  def get(name):
    if not os.path.exists(_entry_path(name)):
      pytest.skip(f"experiments/{name}.py does not exist (yet)")
    if "driver" not in state:
      state["driver"] = _STARTED.pop() if _STARTED else Driver(
          pathlib.Path(tempfile.mkdtemp(prefix="genmodels_driver_")))
    driver = state["driver"]
    if name not in made:
      config_flag = [f"--config={_smoke_config(name)}"] if _smoke_config(name) else []
      listing = driver.run([{"id": "flags", "entry": _entry_path(name),
                             "argv": config_flag, "list_flags": True}])
      info = listing["flags"]["flags"]
      assert info and info["flags"], f"could not list {name}'s flags: {listing}"
      made[name] = (driver, info["flags"], info["config"], driver.tmp)
    return made[name]

  yield get
  for driver in [state.get("driver")] + _STARTED:
    if driver is not None:
      driver.close()


def _config_file(name):
  """The config file an entry point imports (``from genmodels.X import config``)."""
  found = re.search(r"from genmodels\.(\w+) import config\b",
                    pathlib.Path(_entry_path(name)).read_text())
  return f"genmodels/{found.group(1)}/config.py" if found else None


def _smoke_config(name):
  """``--config`` value of the entry point's tiny variant, if it has one."""
  rel = _config_file(name)
  path = os.path.join(REPO, rel) if rel else ""
  if os.path.exists(path) and '"smoke"' in open(path).read():
    return f"{rel}:smoke"
  return None


def _base_args(name, flag_info, workdir):
  args = [f"--config={_smoke_config(name)}"] if _smoke_config(name) else []
  if "workdir" in flag_info:
    args.append(f"--workdir={workdir}")
  args += [f"--no{f}" for f in ("progress", "figures") if f in flag_info]
  return args


def _idx_gz(array):
  header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
  return gzip.compress(header + array.astype(np.uint8).tobytes())


def _manual_dir(path, broken=None):
  """A Fashion-MNIST manual dir with 4 small IDX files, one of them broken."""
  path.mkdir(parents=True)
  rng = np.random.default_rng(0)
  for prefix, n in (("train", 64), ("t10k", 32)):
    (path / f"{prefix}-images-idx3-ubyte.gz").write_bytes(
        _idx_gz(rng.integers(0, 256, (n, 28, 28))))
    (path / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(_idx_gz(rng.integers(0, 10, n)))
  target = path / "train-images-idx3-ubyte.gz"
  if broken == "magic":
    target.write_bytes(gzip.compress(b"\x12\x34\x56\x78" + b"\0" * 64))
  elif broken == "truncated":
    raw = gzip.decompress(target.read_bytes())
    target.write_bytes(gzip.compress(raw[:len(raw) // 2]))
  elif broken == "missing":
    target.unlink()
  return path


# ------------------------------------------------------------ the table
#
# Each class: (flags, tmp) -> (argv, words the error must contain) or None
# where the entry point has no such input. ``flags`` is the entry point's own
# flags, as listed by the driver.

# Sizes and rates are config fields (``--config.PATH=VALUE``): a case picks,
# for each name, the last config path ending in it (for the density ladder,
# the spline flow's, a model that trains: ``UNIT``).
POSITIVE_SIZES = ("num_train", "batch_size", "epochs", "num_test", "num_validation")
SIZES = POSITIVE_SIZES + ("num_steps",)  # 0 steps is valid: a closed-form model
RATES = ("learning_rate",)
ZERO_MEANS_ALL = {"classify": ("num_train", "num_test"),  # 0: the whole split
                  "image_density": ("num_train", "num_test")}


# The unit whose fields a case sets, where an entry point has several: one that
# the default run trains.
UNIT = {"density_mle": "models.spline_flow."}


def _path(name, info):
  paths = sorted(p for p in info["config"] if p == name or p.endswith("." + name))
  preferred = [p for p in paths if p.startswith(UNIT.get(info["entry"], ""))]
  return (preferred or paths or [None])[-1]


def _size(value):
  def case(info, tmp):  # every size field the entry point has
    out = []
    for name in (SIZES if value != 0 else POSITIVE_SIZES):
      path = _path(name, info)
      zero_valid = (info["config"].get(path, {}).get("value") == 0  # e.g. epochs=0: use num_steps
                    or path in ZERO_MEANS_ALL.get(info["entry"], ()))
      if path and not (value == 0 and zero_valid):
        out.append(([f"--config.{path}={value}"], [name, str(value)]))
    return out
  return case


def _rate(value):
  def case(info, tmp):
    path = _path(RATES[0], info)
    return path and ([f"--config.{path}={value}"], [RATES[0], value])
  return case


def _batch_too_large(info, tmp):
  path = _path("batch_size", info)
  return path and ([f"--config.{path}=100000"], ["100000", "larger"])


def _workdir_under_a_file(info, tmp):
  if "workdir" not in info["flags"]:
    return None
  (tmp / "a_file").write_text("not a folder")
  return [f"--workdir={tmp / 'a_file' / 'run'}"], ["workdir", "a_file"]


def _workdir_is_a_file(info, tmp):
  if "workdir" not in info["flags"]:
    return None
  (tmp / "a_file").write_text("not a folder")
  return [f"--workdir={tmp / 'a_file'}"], ["workdir", "is a file"]


def _workdir_in_proc(info, tmp):
  return "workdir" in info["flags"] and (["--workdir=/proc/genmodels_run"],
                                         ["workdir", "/proc"])


def _workdir_other_config(info, tmp):
  if "workdir" not in info["flags"]:
    return None
  (tmp / "old").mkdir()
  (tmp / "old" / "config.json").write_text(json.dumps({"another": "run"}))
  return [f"--workdir={tmp / 'old'}"], ["different config", "--overwrite"]


def _manual_dir_case(broken, words):
  def case(info, tmp):
    if "manual_dir" not in info["config"] or "data_dir" not in info["config"]:
      return None
    manual = _manual_dir(tmp / "manual", broken)
    # A fresh data_dir: the dataset must be prepared from the broken files.
    return [f"--config.manual_dir={manual}", f"--config.data_dir={tmp / 'tfds'}"], words
  return case


def _named(flag, what):
  def case(info, tmp):
    return flag in info["flags"] and ([f"--{flag}=no_such_{what}"],
                                      [f"no_such_{what}", "valid"])
  return case


def _config_variant(info, tmp):
  if "config" not in info["flags"]:
    return None
  return ["--config=" + _config_path(info["flags"]) + ":no_such_variant"], [
      "no_such_variant", "valid"]


def _bad_model_fields(info, tmp):
  """A density model's own field out of range, or a field it does not have:
  caught when the model is built, before the workdir exists."""
  if not any(p.startswith("models.gan.model.") for p in info["config"]):
    return None
  return [(["--model=gan", "--config.models.gan.model.noise_dim=1"], ["gan", "noise_dim"]),
          (["--model=gan", "--config.models.gan.model.rejection_quantile=1.5"],
           ["gan", "rejection_quantile"]),
          (["--model=vae", "--config.models.vae.model.latent_dim=0"], ["vae", "latent_dim"]),
          (["--model=diffusion", "--config.models.diffusion.model.parameterization=x"],
           ["diffusion", "parameterization"]),
          (["--model=ebm", "--config.models.ebm.model.head=sigmoid"], ["ebm", "head"]),
          (["--model=histogram", "--config.models.histogram.model.tv_weight=-1"],
           ["histogram", "tv_weight"]),
          (["--config.models.gmm.model.no_such_field=3"], ["unknown config field",
                                                            "no_such_field"])]


def _config_path(flag_info):
  return flag_info["config"]["default"].strip("'\"")


BAD_INPUT = {
    "unknown_model": _named("model", "model"),
    "unknown_dataset": _named("dataset", "dataset"),
    "zero_size": _size(0),
    "negative_size": _size(-3),
    "unparsable_size": lambda i, t: (p := _path("batch_size", i)) and (
        [f"--config.{p}=twelve"], ["batch_size", "twelve"]),
    "negative_rate": _rate("-1"),
    "zero_rate": _rate("0"),
    "nan_rate": _rate("nan"),
    "batch_larger_than_data": _batch_too_large,
    "workdir_under_a_file": _workdir_under_a_file,
    "workdir_is_a_file": _workdir_is_a_file,
    "workdir_in_proc": _workdir_in_proc,
    "workdir_with_another_config": _workdir_other_config,
    "data_files_missing": _manual_dir_case("missing", ["not found", "train-images"]),
    "data_file_wrong_magic": _manual_dir_case("magic", ["magic", "train-images"]),
    "data_file_truncated": _manual_dir_case("truncated", ["truncated", "train-images"]),
    "manual_dir_not_a_folder": lambda i, t: "manual_dir" in i["config"] and (
        [f"--config.manual_dir={t / 'nowhere'}"], ["nowhere"]),
    "bad_model_fields": _bad_model_fields,
    "unknown_config_variant": _config_variant,
    "unknown_config_field": lambda i, t: "config" in i["flags"] and (
        ["--config.no_such_field=1"], ["no_such_field"]),
    "unknown_flag": lambda i, t: (["--no_such_flag=1"], ["no_such_flag"]),
    "stray_argument": lambda i, t: (["stray_argument"], ["stray_argument"]),
}


def _check_one_error_line(result, words=()):
  out, err = result["stdout"] or "", result["stderr"] or ""
  assert "Traceback" not in out + err, err
  lines = [line for line in err.splitlines() if line.strip()]
  errors = [line for line in lines if line.startswith("error:")]
  assert len(errors) == 1 and lines[-1] == errors[0], f"stderr: {err!r}"
  for word in words:
    assert word.lower() in errors[0].lower(), f"{word!r} not in {errors[0]!r}"
  return errors[0]


@pytest.fixture(scope="module")
def table_results(drivers, tmp_path_factory):
  """All table cases of one entry point, run in one batch: {entry: {case: result}}."""
  cache = {}

  def get(entry):
    if entry not in cache:
      driver, flag_info, config_keys, _ = drivers(entry)
      info = {"flags": flag_info, "config": config_keys, "entry": entry}
      cases, expected = [], {}
      for name, make in BAD_INPUT.items():
        tmp = tmp_path_factory.mktemp(f"{entry}_{name}")
        made = make(info, tmp)
        for j, (argv, words) in enumerate([made] if isinstance(made, tuple) else made or []):
          base = _base_args(entry, flag_info, tmp / f"run{j}")
          if any(a.startswith("--config=") for a in argv):
            base = [a for a in base if not a.startswith("--config=")]
          cases.append({"id": f"{name}#{j}", "entry": _entry_path(entry),
                        "argv": base + argv, "timeout": 120})
          expected[f"{name}#{j}"] = (words, tmp)
      # --overwrite replaces a run with another config and goes on.
      if "workdir" in flag_info and "overwrite" in flag_info:
        tmp = tmp_path_factory.mktemp(f"{entry}_overwrite")
        (tmp / "old").mkdir()
        (tmp / "old" / "config.json").write_text(json.dumps({"another": "run"}))
        (tmp / "old" / "stale_output").write_text("from the other run")
        cases.append({"id": "overwrite_proceeds", "timeout": 120, "fake_data": True,
                      "entry": _entry_path(entry),
                      "argv": _base_args(entry, flag_info, tmp / "old") + ["--overwrite"]})
        expected["overwrite_proceeds"] = ([], tmp)
      cache[entry] = (driver.run(cases), expected)
    return cache[entry]

  return get


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_bad_input_is_one_line_and_status_2(table_results, entry, case):
  results, expected = table_results(entry)
  runs = sorted(k for k in results if k.split("#")[0] == case)
  if not runs:
    pytest.skip(f"{entry} takes no such input")
  for run in runs:
    result = results[run]
    assert result["code"] == 2, (run, result)
    words, tmp = expected[run]
    _check_one_error_line(result, words)
  if case == "workdir_with_another_config":  # refused: the old run is untouched
    assert json.loads((tmp / "old" / "config.json").read_text()) == {"another": "run"}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_overwrite_replaces_a_run_with_another_config(table_results, entry):
  results, expected = table_results(entry)
  if "overwrite_proceeds" not in results:
    pytest.skip(f"{entry} has no --overwrite")
  result = results["overwrite_proceeds"]
  assert result["code"] in (0, "train"), result
  assert "Traceback" not in (result["stderr"] or "")
  old = expected["overwrite_proceeds"][1] / "old"
  assert not (old / "stale_output").exists()
  assert json.loads((old / "config.json").read_text()) != {"another": "run"}


# ------------------------------------------------------- randomised flags

# Plausible values most of the time, so runs get past parsing to the deeper
# checks (and to training); hostile ones otherwise. Sizes between 10**7 and
# 10**11 are left out: they are valid and would really run for minutes.
GOOD_INTS = [1, 2, 3, 8, 16, 31, 32, 64, 100, 257, 1000]
BAD_INTS = [-(10**12), -7, -1, 0, 10**12, "abc", "1.5", "", "0x10", "nan", "1e3", "٣"]
GOOD_FLOATS = [1e-6, 1e-3, 0.01, 0.5, 1, 10]
BAD_FLOATS = [-1, -1e-9, 0, 1e30, "nan", "inf", "-inf", "1e-400", "1e400", "abc", "",
              "0x1p-3", "1,5"]
NAMES = ["box", "gmm", "spline_flow", "realnvp", "ladder", "gmm,box", "mlp", "cnn",
         "linear", "fashion_mnist_offline", "mnist/nope", "a b", "../../etc", "", ",",
         "Ünï", "no_such", "x" * 300, "box,,nope", "constant", "onecycle"]
BOOLS = ["true", "false", "1", "0", "maybe", ""]


# Multi-process flags are left out: a plausible combination waits for peers.
NOT_FUZZED = ("config", "workdir", "coordinator_address", "num_processes", "process_id")


def _value(rng, kind):
  good = rng.random() < 0.7
  if kind == "int":
    return rng.choice(GOOD_INTS if good else BAD_INTS)
  if kind == "float":
    return rng.choice(GOOD_FLOATS if good else BAD_FLOATS)
  if kind == "bool":
    return rng.choice(BOOLS[:4] if good else BOOLS)
  return rng.choice(NAMES)


def _random_argv(rng, flag_info, config_keys, tmp, i):
  workdir = tmp / f"w{i}"
  argv = [f"--workdir={workdir}"] if "workdir" in flag_info else []
  smoke = _smoke_config_for(flag_info)
  if smoke and rng.random() < 0.9:
    argv.append(f"--config={smoke}")
  for name, info in flag_info.items():
    if name in NOT_FUZZED or rng.random() < 0.6:
      continue
    if info["type"] == "bool":
      argv.append(rng.choice([f"--{name}", f"--no{name}", f"--{name}={_value(rng, 'bool')}"]))
      continue
    else:
      value = _value(rng, info["type"])
    argv.append(f"--{name}={value}")
  if smoke and config_keys:
    for _ in range(rng.choice([0, 1, 1, 2, 3])):
      key = rng.choice(sorted(config_keys))
      if key in ("data_dir", "manual_dir"):
        value = rng.choice([str(tmp / "nowhere"), "", "/proc", str(tmp / f"d{i}"),
                            "/etc/passwd"])
      else:
        value = _value(rng, config_keys[key]["type"])
      argv.append(f"--config.{key}={value}")
  if rng.random() < 0.1:
    argv.append(rng.choice(["stray", "--no_such_flag", "--workdir", "-x"]))
  if rng.random() < 0.15 and "workdir" in flag_info:
    argv.append(f"--workdir={rng.choice(['', str(tmp / 'afile' / 'x'), '/proc/x'])}")
  return argv


def _smoke_config_for(flag_info):
  if "config" not in flag_info:
    return None
  path = _config_path(flag_info)
  rel = os.path.relpath(path, REPO) if os.path.isabs(path) else path
  full = os.path.join(REPO, rel)
  return f"{rel}:smoke" if os.path.exists(full) and '"smoke"' in open(full).read() else None


# Random command lines per entry point: a few in the default suite, many more
# (other draws) in the slow tier that .ci/run runs after it.
NUM_RANDOM = {"default": 8, "slow": 25}


@pytest.mark.parametrize("tier", ["default", pytest.param("slow", marks=pytest.mark.slow)])
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_random_flags_never_show_a_traceback(drivers, entry, tier, tmp_path):
  driver, flag_info, config_keys, _ = drivers(entry)
  seed = int(os.environ.get("GENMODELS_FUZZ_SEED", "20261128"))
  rng = random.Random(f"{seed}-{entry}-{tier}")
  num_random = NUM_RANDOM[tier]
  (tmp_path / "afile").write_text("a file")
  cases = [{"id": str(i), "argv": _random_argv(rng, flag_info, config_keys, tmp_path, i),
            "entry": _entry_path(entry), "fake_data": True, "timeout": 120}
           for i in range(num_random)]
  results = driver.run(cases)
  failures = []
  for case in cases:
    result = results[case["id"]]
    try:
      assert result["code"] in (0, 1, 2, "train"), f"status {result['code']}"
      if result["code"] in (1, 2):
        _check_one_error_line(result)
      else:
        assert "Traceback" not in (result["stderr"] or "") + (result["stdout"] or "")
    except AssertionError as e:
      failures.append(f"{case['argv']}: {e} :: {(result.get('stderr') or '')[-2000:]}")
  assert not failures, "\n\n".join(failures)
  codes = [results[c["id"]]["code"] for c in cases]
  assert codes.count(2) >= num_random // 4  # the fuzzing does reach the checks


# ---------------------------------------------- real processes, end to end

@pytest.mark.parametrize("entry", ["density_mle", "classify"])
def test_real_process_bad_flag_is_one_line_and_status_2(entry):
  """The plain interpreter, no driver: absl's own parse error path."""
  proc = subprocess.run([sys.executable, _entry_path(entry), "--no_such_flag=1"],
                        cwd=REPO, capture_output=True, text=True, timeout=120,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.startswith("error:") and proc.stderr.count("\n") == 1, proc.stderr
  assert "no_such_flag" in proc.stderr and "Traceback" not in proc.stdout + proc.stderr


def test_diverging_run_is_one_line_and_status_1(drivers, tmp_path):
  """Real training (no stub) at a learning rate far too high: exit 1, one line.

  The engine-level guarantees (the step, the quantity, the intact checkpoint)
  are in test_nonfinite.py.
  """
  driver, *_ = drivers("density_mle")
  workdir = tmp_path / "run"
  result = driver.run([{
      "id": "diverge", "entry": _entry_path("density_mle"), "real_training": True,
      "timeout": 300, "argv": [
          "--config=genmodels/density/config.py:smoke", f"--workdir={workdir}",
          "--model=gmm", "--noprogress", "--nofigures",
          "--config.models.gmm.optimizer.learning_rate=30",
          "--config.models.gmm.train.num_steps=60"]}])["diverge"]
  assert result["code"] == 1, result
  error = _check_one_error_line(result, ["non-finite", "at step", "last good checkpoint"])
  assert re.search(r"non-finite (loss|gradient norm) at step \d+;", error), error
  # Only the model's header precedes it: no log noise, no usage text.
  assert [l for l in result["stderr"].splitlines() if l.strip()] == ["== gmm", error]
  assert not (workdir / "results.json").exists()
  bad_step = int(re.search(r"at step (\d+)", error).group(1))
  ckpt_dir = workdir / "models" / "gmm" / "checkpoints"
  saved = [int(n) for n in os.listdir(ckpt_dir) if n.isdigit()] if ckpt_dir.exists() else []
  assert all(s <= bad_step for s in saved)


# ------------------------------------------------- load_density().log_prob

@pytest.fixture(scope="module")
def trained_density(tmp_path_factory):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from genmodels import models  # pylint: disable=g-import-not-at-top
  from genmodels.density import trained  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp("density")
  model = models.get_density_model("gaussian_diag")
  points = jnp.array([[0.0, 0.0], [10.0, 10.0], [-20.0, 5.0], [30.0, -40.0]])
  params = model.init(jax.random.key(0), points, method="log_prob")["params"]
  os.makedirs(workdir / "models" / "gaussian_diag")
  trained.save(str(workdir / "models" / "gaussian_diag"), "gaussian_diag", {}, params)
  return trained.load_density(str(workdir), "gaussian_diag")


@pytest.mark.parametrize("points", [
    np.zeros((5, 3)), np.zeros((2, 2, 2)), np.zeros(3), np.float32(1.0), np.zeros((0,)),
    [[1.0, 2.0], [3.0]], [["a", "b"]], np.zeros((4, 1))],
    ids=["N_by_3", "rank_3", "vector_of_3", "scalar", "empty_vector", "ragged",
         "strings", "N_by_1"])
def test_log_prob_of_wrong_shapes_is_a_one_line_value_error(trained_density, points):
  with pytest.raises(ValueError) as info:
    trained_density.log_prob(points)
  assert "\n" not in str(info.value) and str(info.value)


def test_log_prob_of_right_shapes(trained_density):
  assert trained_density.log_prob(np.zeros((5, 2))).shape == (5,)
  assert np.ndim(trained_density.log_prob([10.0, 20.0])) == 0
  assert np.isfinite(trained_density.log_prob([[10.0, 20.0]])).all()


def test_load_density_from_a_folder_without_a_run(tmp_path):
  import genmodels  # pylint: disable=g-import-not-at-top
  for name in (None, "gmm"):
    with pytest.raises(ValueError) as info:
      genmodels.load_density(str(tmp_path), name)
    assert "\n" not in str(info.value)
