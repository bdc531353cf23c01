"""The benchmarks, one module each (``python -m bench.run --only NAME`` runs some): what each one
measures and against which peer is in docs/benchmarks.md.

Every module has ``run(ctx) -> (figures, details)`` on a ``bench.context.Context``; ``bench.run``
names them (``BENCHMARKS``) and orders the CPU and GPU suites. What they share (the run's context,
the server under test, the load generator, models, images, statistics, the report) stays in
``bench/`` beside them.
"""
