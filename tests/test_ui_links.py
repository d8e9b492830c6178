"""`make mlflow-ui` prints the direct link to each experiment's runs table (MLflow 3 opens on a GenAI page)."""


def test_each_experiment_gets_a_link_to_its_runs_table(tmp_path):
    from mlflow.tracking import MlflowClient

    from lightning_asr.study.ui import runs_links

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    experiment_id = MlflowClient(tracking_uri=uri).create_experiment(
        "forgetting-smoke", artifact_location=str(tmp_path)
    )
    assert runs_links(uri, "127.0.0.1", 5123) == [
        f"  forgetting-smoke: http://127.0.0.1:5123/#/experiments/{experiment_id}/runs"
    ]
