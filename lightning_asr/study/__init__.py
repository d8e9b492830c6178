"""The continual-learning study: which adaptation strategy learns the new domain and keeps the old one?

- ``benchmark.py``: the forgetting benchmark (``Benchmark``, its config, the identity of bases and cells);
- ``forgetting.py``: forgetting, adaptation gain, backward gain, forward loss, and their intervals;
- ``tracking.py``: MLflow (the store, the tags that find runs);
- ``plan.py``, ``claims/``, ``verdicts.py``, ``cells.py``, ``figures.py``, ``report.py``: the reproduction of
  the seed papers' claims as named experiments over the benchmark, judged by one set of rules;
- ``reproduction.py``: running those experiments and writing the report; ``cli.py``: the command lines.
"""
