"""``make bench``: what users of the classification service care about, each figure measured as a
ratio against a peer in the same run (absolute times drift on shared machines; ratios hold).

Entry point: ``python -m bench.run [--quick|--full] [--only NAME,...] [--out DIR]``.
"""
