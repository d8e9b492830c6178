"""Reproducing the seeds' claims: named experiments run on the forgetting benchmark, then a report with verdicts.

    make reproduce [PROFILE=embedded|tiny|configs/reproduce/<gpu profile>.yaml] [SEEDS=1,2,3] [ARGS='key=value ...']
    .venv/bin/python benchmarks/reproduce.py --profile embedded [--experiments blora-vs-lora,rank-sweep]
                                             [--report-only] [--check] [--force] [key=value ...]

The named experiments are ``lightning_asr/study/claims/`` (one file each); their grids come from the profile
(``configs/reproduce/*.yaml``). The report goes to ``reports/<profile>/REPRODUCTION.md`` and to MLflow;
``--report-only`` rebuilds it from the latest runs.
"""

import sys

from lightning_asr.study.cli import reproduce_main

if __name__ == "__main__":
    sys.exit(reproduce_main())
