r"""Benchmarks of the experiments' own train steps, on whatever backend is present.

  python3 experiments/benchmark.py --quick        # the committed CPU results, ~5 min
  python3 experiments/benchmark.py                # the full grid (long on a CPU)
  python3 experiments/benchmark.py --models=cnn_im2col --batch_sizes=32,256 \
      --dtypes=float32,bfloat16 --steps_per_dispatch=1,25
  python3 experiments/benchmark.py --convergence=spline_flow,realnvp

The step timed is the step the experiments train: each case's task comes from
``classify.make_task`` or ``density.make_task`` (the experiment's config with
the case's batch size, dtype, model and steps per dispatch applied), and the
state, the device-resident data, the sharded [k, B] indices and the jitted
``multi_step`` come from ``experiment.setup``, which is ``loop.setup``: what
``loop.train`` runs (tests/test_benchmark.py checks the outputs are
bitwise the same). ``--steps_per_dispatch`` may include 0: one
``steps.make_train_step`` of the task's loss per dispatch on a fixed device
batch (no lax.scan), for comparison.

Per case: compile time; steady-state steps/s and examples/s (median of
``--repeats`` timed windows after warm-up); FLOPs per step from XLA's cost
analysis; achieved FLOP/s as a fraction of (a) a square matmul's FLOP/s
measured in the same process right after each timed window and (b) the chip's
nominal dense peak when known; the compiled program's and the device's peak
memory. Then: scaling from 1 to N devices, the CNN's time by kind of XLA op
(jax.profiler), and one real Fashion-MNIST epoch through ``experiment.run``
against the sum of its train steps. On an accelerator run the same command
there. ``--convergence`` instead trains density models with the default
density config as density_mle.py does and times the held-out KL to
``--convergence_kl``.

Writes ``--out/<machine tag>.json`` and ``.md`` (``-convergence`` for the
latter), each with the machine (CPU model, cores, devices), the package
versions and the CPU steal measured during the run.

Every flag is checked before anything runs or is written: a bad one is one
line ``error: ...`` and exit status 2. The results replace the old files
(through a temporary file and a rename) only after a run that measured
something.

Import it as ``genmodels.bench``; ``python3 -m genmodels.bench`` is the same
entry point as ``experiments/benchmark.py``. Modules: ``cli`` (the flags, their
checks and main; no JAX), ``spec`` (model names, the case, the quick set),
``runner`` (the runs), ``machine`` (facts, nominal peaks, tag), ``cases``
(the cases' tasks from the experiments' builders), ``harness`` (the compiled
step, the matmul reference, timing), ``profiler`` (time by kind of op),
``scaling``, ``epoch``, ``convergence`` and ``report`` (JSON and markdown).
"""
