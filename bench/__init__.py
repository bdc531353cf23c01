"""``make bench``: what users of the classification service care about, each figure measured as a
ratio against a peer in the same run (absolute times drift on shared machines; ratios hold); see
docs/benchmarks.md.

Entry point: ``python -m bench.run [--quick|--full] [--only NAME,...] [--out DIR]``.

Layout: ``bench/suites/`` holds the benchmarks, one module each; ``bench/`` itself the harness
they share: ``context`` (one run's modes, stores, photo and server), ``server`` (the
``verydeep serve`` process under test, shared with the reliability tests), ``loadgen`` and
``bare_load`` (programs the suites run as separate processes), ``common``, ``models``, ``images``,
``machine``, ``stats`` and ``report``. ``bench/results/`` holds measurement records (JSON and
Markdown); ``bench/probes/`` the one-off scripts that produced some of them, kept as they ran.
"""
