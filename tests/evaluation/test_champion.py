from evaluation_fixtures import log_run
from mlflow.tracking import MlflowClient

from cxr.evaluation.champion import CHAMPION_ALIAS, champion_summary, update_champion
from cxr.tracking import use_experiment


def test_champion_alias_moves_only_on_improvement(tmp_path, store):
    experiment_id = use_experiment("cxr-champion", tmp_path, store)
    client = MlflowClient()  # after use_experiment, which points MLflow at this module's store
    first, first_uri = log_run(experiment_id, "vgg16", "data-a", 0.80, with_model=True)
    # the first evaluated model becomes the champion
    status = update_champion("cxr-test", {"mlflow_run_id": first, "model_uri": first_uri},
                             "test_accuracy", "data-a")  # fmt: skip
    assert status["action"] == "promoted" and status["reason"] == "first champion"
    assert client.get_model_version_by_alias("cxr-test", CHAMPION_ALIAS).run_id == first
    # a worse model, and an equal one, leave it alone
    for accuracy in (0.70, 0.80):
        worse, worse_uri = log_run(experiment_id, "resnet50", "data-a", accuracy, with_model=True)
        status = update_champion("cxr-test", {"mlflow_run_id": worse, "model_uri": worse_uri},
                                 "test_accuracy", "data-a")  # fmt: skip
        assert status["action"] == "none" and "does not beat" in status["reason"]
        assert client.get_model_version_by_alias("cxr-test", CHAMPION_ALIAS).run_id == first
    # a model on other data cannot be compared
    elsewhere, elsewhere_uri = log_run(experiment_id, "vgg19", "data-b", 0.99, with_model=True)
    status = update_champion("cxr-test", {"mlflow_run_id": elsewhere, "model_uri": elsewhere_uri},
                             "test_accuracy", "data-b")  # fmt: skip
    assert status["action"] == "none" and "other data" in status["reason"]
    # a better one takes the alias; the champion itself is left as is
    better, better_uri = log_run(experiment_id, "mobilenetv2", "data-a", 0.90, with_model=True)
    status = update_champion("cxr-test", {"mlflow_run_id": better, "model_uri": better_uri},
                             "test_accuracy", "data-a")  # fmt: skip
    assert status["action"] == "promoted" and status["version"] == 2
    champion = client.get_model_version_by_alias("cxr-test", CHAMPION_ALIAS)
    assert champion.run_id == better and champion.tags["data_fingerprint"] == "data-a"
    again = update_champion("cxr-test", {"mlflow_run_id": better, "model_uri": better_uri},
                            "test_accuracy", "data-a")  # fmt: skip
    assert again["action"] == "none" and "is the champion" in again["reason"]
    assert update_champion("cxr-test", {}, "test_accuracy", "data-a")["action"] == "none"


def test_champion_summary_names_the_alias_the_action_and_the_reason():
    status = {"action": "promoted", "reason": "first champion"}
    assert champion_summary("cxr", status) == "Champion `cxr@champion`: promoted (first champion)"


def test_an_ensemble_run_never_becomes_champion(tmp_path, store):
    # given a better-scoring run tagged model=ensemble, with a logged model
    experiment_id = use_experiment("cxr-champion-ensemble", tmp_path, store)
    ensemble, ensemble_uri = log_run(experiment_id, "ensemble", "data-a", 0.99, with_model=True)
    # when it is offered as the champion
    status = update_champion("cxr-ensemble", {"mlflow_run_id": ensemble, "model_uri": ensemble_uri},
                             "test_accuracy", "data-a")  # fmt: skip
    # then nothing is registered: the champion is a single model
    assert status["action"] == "none" and "is an ensemble" in status["reason"]
    assert not MlflowClient().search_model_versions("name = 'cxr-ensemble'")
