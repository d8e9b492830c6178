"""`make mlflow-ui` prints the direct link to each experiment's runs table (MLflow 3 opens on a GenAI page)."""

import pytest


def test_each_experiment_gets_a_link_to_its_runs_table(tmp_path):
    from mlflow.tracking import MlflowClient

    from lightning_asr.study.ui import runs_links

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    experiment_id = MlflowClient(tracking_uri=uri).create_experiment(
        "forgetting-smoke", artifact_location=str(tmp_path)
    )
    assert runs_links(uri, "127.0.0.1", 5123) == [
        f"  forgetting-smoke: http://127.0.0.1:5123/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    ]


@pytest.mark.slow
def test_ui_check_in_headless_chromium(tmp_path):
    """`make ui-check` where Chromium, chromedriver and Selenium are installed; skipped with the reason elsewhere."""
    from lightning_asr.study import ui_check

    try:
        ui_check.find_browser(None)
    except ui_check.Missing as err:
        pytest.skip(str(err))
    assert ui_check.main(["--out", str(tmp_path)]) == 0
    assert {p.name for p in tmp_path.glob("*.png")} >= {"1-experiment-runs.png", "3-compare-children.png"}
