r"""Benchmarks of the experiments' own train steps (``python3 -m genmodels.bench``).

  python3 -m genmodels.bench --quick        # the committed CPU results, ~5 min
  python3 -m genmodels.bench --convergence=spline_flow,realnvp

The same as ``experiments/benchmark.py``; see genmodels/bench/__init__.py for
what it measures; the flags are below.
"""

from absl import flags

from genmodels import cli
from genmodels.bench import cli as bench_cli

flags.adopt_module_key_flags(bench_cli)

if __name__ == "__main__":
  cli.run(bench_cli.main)
