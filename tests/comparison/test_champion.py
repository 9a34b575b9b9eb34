from evaluation_fixtures import log_run
from mlflow.tracking import MlflowClient

from cxr.comparison.champion import CHAMPION_ALIAS, champion_summary, update_champion
from cxr.tracking.store import use_experiment


def offer(name: str, run_id: str, model_uri: str | None, fingerprint: str = "data-a") -> dict:
    """update_champion for a run as metrics/summary/evaluate.json names it."""
    evaluated = {"mlflow_run_id": run_id, "model_uri": model_uri}
    return update_champion(name, evaluated, "test_accuracy", fingerprint)


def test_champion_alias_moves_only_on_improvement_and_says_why(tmp_path, store):
    experiment_id = use_experiment("cxr-champion", tmp_path, store)
    client = MlflowClient()  # after use_experiment, which points MLflow at this module's store
    first, first_uri = log_run(experiment_id, "vgg16", "data-a", 0.80, with_model=True)
    # the first evaluated model becomes the champion
    status = offer("cxr-test", first, first_uri)
    assert status["action"] == "promoted" and status["version"] == 1
    assert champion_summary("cxr-test", status) == (
        f"Champion `cxr-test@champion`: promoted vgg16 run {first[:8]} as version 1, "
        "the first champion (test_accuracy 0.8000)"
    )
    assert client.get_model_version_by_alias("cxr-test", CHAMPION_ALIAS).run_id == first
    # a worse model, and an equal one, leave it alone: the champion's figure against theirs
    for accuracy in (0.4848, 0.80):
        worse, worse_uri = log_run(experiment_id, "resnet50", "data-a", accuracy, with_model=True)
        status = offer("cxr-test", worse, worse_uri)
        assert status["action"] == "kept"
        assert status["reason"] == (
            f"kept version 1 (vgg16 run {first[:8]}): its test_accuracy 0.8000 is not "
            f"beaten by resnet50 run {worse[:8]} at {accuracy:.4f}"
        )
        assert status["test_accuracy"] == accuracy and status["champion_test_accuracy"] == 0.80
        assert client.get_model_version_by_alias("cxr-test", CHAMPION_ALIAS).run_id == first
    # a better one takes the alias, and the line names both figures and the old version
    better, better_uri = log_run(experiment_id, "mobilenetv2", "data-a", 0.9899, with_model=True)
    status = offer("cxr-test", better, better_uri)
    assert status["action"] == "promoted" and status["version"] == 2
    assert status["reason"] == (
        f"promoted mobilenetv2 run {better[:8]} as version 2: test_accuracy 0.9899 beats "
        f"version 1's 0.8000 (vgg16 run {first[:8]})"
    )
    champion = client.get_model_version_by_alias("cxr-test", CHAMPION_ALIAS)
    assert champion.run_id == better and champion.tags["data_fingerprint"] == "data-a"
    # offering the champion itself keeps it
    again = offer("cxr-test", better, better_uri)
    assert again["action"] == "kept" and again["reason"] == (
        f"kept version 2 (mobilenetv2 run {better[:8]}): it is the run just evaluated "
        "(test_accuracy 0.9899)"
    )


def test_a_run_that_cannot_be_champion_is_not_eligible_and_the_champion_stays(tmp_path, store):
    # given a champion on data-a
    experiment_id = use_experiment("cxr-champion-eligible", tmp_path, store)
    held, held_uri = log_run(experiment_id, "vgg16", "data-a", 0.70, with_model=True)
    assert offer("cxr-eligible", held, held_uri)["action"] == "promoted"
    stays = f"version 1 (vgg16 run {held[:8]}) stays champion"
    # when runs that cannot be champion are offered, however well they score
    elsewhere, elsewhere_uri = log_run(experiment_id, "vgg19", "data-b", 0.99, with_model=True)
    unscored, unscored_uri = log_run(experiment_id, "resnet50", "data-a", None, with_model=True)
    ensemble, ensemble_uri = log_run(experiment_id, "ensemble", "data-a", 0.99, with_model=True)
    reasons = {
        "no model": offer("cxr-eligible", "", None)["reason"],
        "other data": offer("cxr-eligible", elsewhere, elsewhere_uri)["reason"],
        "no metric": offer("cxr-eligible", unscored, unscored_uri)["reason"],
        "ensemble": offer("cxr-eligible", ensemble, ensemble_uri)["reason"],
        "other store": offer("cxr-eligible", "f" * 32, "runs:/nowhere/classifier")["reason"],
    }
    # then each says why, and that the champion stays
    assert reasons == {
        "no model": "not eligible: metrics/summary/evaluate.json names no logged model "
        "(run evaluate "
        f"first); {stays}",
        "other data": f"not eligible: vgg19 run {elsewhere[:8]} was evaluated on other data "
        f"(fingerprint data-b, the current data is data-a); {stays}",
        "no metric": f"not eligible: resnet50 run {unscored[:8]} has no test_accuracy "
        f"(compare.rank_by); {stays}",
        "ensemble": f"not eligible: ensemble run {ensemble[:8]} averages several models; the "
        f"registry serves one model; {stays}",
        "other store": "not eligible: run ffffffff is not in this MLflow store (check "
        f"MLFLOW_TRACKING_URI); {stays}",
    }
    assert offer("cxr-eligible", ensemble, ensemble_uri)["action"] == "not_eligible"
    client = MlflowClient()
    assert client.get_model_version_by_alias("cxr-eligible", CHAMPION_ALIAS).run_id == held
    assert len(client.search_model_versions("name = 'cxr-eligible'")) == 1
    # and with no champion at all, the line says there is none yet
    status = offer("cxr-nobody", ensemble, ensemble_uri)
    assert status["reason"].endswith("; no champion yet")
    assert not client.search_model_versions("name = 'cxr-nobody'")


def test_a_champion_scored_on_other_data_is_kept_and_the_line_says_how_to_move_it(tmp_path, store):
    # given a champion registered while the data was data-a
    experiment_id = use_experiment("cxr-champion-data", tmp_path, store)
    held, held_uri = log_run(experiment_id, "vgg16", "data-a", 0.95, with_model=True)
    assert offer("cxr-data", held, held_uri)["action"] == "promoted"
    # when a run on the new data (data-b) is offered
    fresh, fresh_uri = log_run(experiment_id, "vgg19", "data-b", 0.60, with_model=True)
    status = offer("cxr-data", fresh, fresh_uri, fingerprint="data-b")
    # then the champion is kept, since the figures are on different test images
    assert status["action"] == "kept"
    assert status["reason"] == (
        f"kept version 1 (vgg16 run {held[:8]}): it was scored on other data (fingerprint "
        f"data-a, the current data is data-b), so vgg19 run {fresh[:8]} at test_accuracy "
        "0.6000 cannot be compared with it; move the alias by hand "
        "(MlflowClient().set_registered_model_alias) if the new data should win"
    )
    # and a champion registered from a run of another store is kept too, and said so
    client = MlflowClient()
    client.create_registered_model("cxr-foreign")
    foreign = client.create_model_version("cxr-foreign", str(tmp_path), run_id="e" * 32)
    client.set_registered_model_alias("cxr-foreign", CHAMPION_ALIAS, foreign.version)
    status = offer("cxr-foreign", fresh, fresh_uri, fingerprint="data-b")
    assert status["action"] == "kept" and status["reason"].startswith(
        "kept version 1 (run eeeeeeee): its run is not in this MLflow store"
    )


def test_champion_summary_names_the_alias_and_the_reason():
    status = {"action": "kept", "reason": "kept version 3 (vgg16 run 1a2b3c4d): ..."}
    assert champion_summary("cxr", status) == (
        "Champion `cxr@champion`: kept version 3 (vgg16 run 1a2b3c4d): ..."
    )
