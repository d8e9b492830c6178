"""The continual-learning study: which adaptation strategy learns the new domain and keeps the old one?

- ``benchmark.py``: the forgetting benchmark's stages (``Benchmark``); ``profile.py``: its config
  (``BenchConfig``); ``identity.py``: what identifies a cached base and a finished cell;
- ``result.py``: what a run returns (``BenchmarkResult``); ``summary.py``: the comparison as pure functions of
  it; ``statistics.py``: paired, crossed statistics (seeds and utterances), verdicts, power, fronts;
  ``interpolation.py``: λ curves of a trained cell;
- ``forgetting.py``: forgetting, adaptation gain, backward gain, forward loss of one cell;
- ``tracking.py``: MLflow (the store, the tags that find runs);
- ``plan.py``, ``claims/``, ``verdicts.py``, ``cells.py``, ``figures.py``, ``report.py``: the reproduction of
  the seed papers' claims as named experiments over the benchmark;
- ``reproduction.py``: running those experiments and writing the report; ``cli.py``: the command lines.
"""
