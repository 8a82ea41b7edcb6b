r"""Benchmarks of the experiments' own train steps: the package is genmodels/bench/.

  python3 experiments/benchmark.py --quick        # the committed CPU results, ~5 min
  python3 experiments/benchmark.py --convergence=spline_flow,realnvp

See genmodels/bench/__init__.py for what it measures; the flags are below.
"""

from absl import flags

from genmodels import cli
from genmodels.bench import cli as bench_cli

flags.adopt_module_key_flags(bench_cli)

if __name__ == "__main__":
  cli.run(bench_cli.main)
