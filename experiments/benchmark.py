r"""Benchmarks of the experiments' train steps: the entry point of ``experiments/benchmark/``.

  python3 experiments/benchmark.py --quick
  python3 experiments/benchmark.py --convergence=spline_flow,realnvp

See ``experiments/benchmark/__init__.py`` for what it measures. Run as a
script, this file's folder comes first on ``sys.path``, so ``benchmark`` is
the package next to it (a package wins over a module of the same name).
"""

from absl import app

from genmodels.bench import cli

if __name__ == "__main__":
  app.run(cli.main)
