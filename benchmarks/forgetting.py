"""Forgetting benchmark: which adaptation strategy learns the target domain and keeps the source domains?

    make bench-forgetting [PROFILE=embedded|smoke|path/to/config.yaml] [SEEDS=1,2,3] [ARGS='key=value ...']
    .venv/bin/python benchmarks/forgetting.py --profile embedded [--seeds 1,2,3] [--force] [--check] [key=value ...]

The stages, the caching of bases and cells and the MLflow records are ``lightning_asr/study/benchmark.py``'s.
"""

import sys

from lightning_asr.study.cli import forgetting_main

if __name__ == "__main__":
    sys.exit(forgetting_main())
