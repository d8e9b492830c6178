"""What `make mlflow-ui` prints before it starts the server: the direct link to each benchmark's training runs.

MLflow 3 opens an experiment on its GenAI "Overview" page (traces, latency, token usage: all empty for
training runs). The UI keys that view on the browser's *workflow type* (its "GenAI" / "Model training"
toggle, kept in the browser's local storage, GenAI by default), not on the experiment: the tag
``mlflow.experimentKind`` does not change it. A link with ``?workflowType=machine_learning`` sets it, so
each printed link opens the runs table, where the comparison happens (``make ui-check`` checks this).
"""

from __future__ import annotations

import argparse
import sys


def runs_links(tracking_uri: str, host: str, port: int) -> list[str]:
    """One line per experiment of the store: its name and the URL of its runs table."""
    from lightning_asr.study.tracking import client_for

    experiments = client_for(tracking_uri).search_experiments()
    return [
        f"  {e.name}: http://{host}:{port}/#/experiments/{e.experiment_id}/runs?workflowType=machine_learning"
        for e in sorted(experiments, key=lambda e: e.name)
        if e.name != "Default"
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightning_asr.study.ui")
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    from lightning_asr.console import quiet

    quiet()
    links = runs_links(args.tracking_uri, args.host, args.port)
    print("MLflow UI: the training runs of each benchmark (compare: tick runs, then Compare):")
    print("\n".join(links) if links else "  (no experiment in the store yet: run make bench-forgetting)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
