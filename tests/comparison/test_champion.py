from evaluation_fixtures import log_run
from mlflow.tracking import MlflowClient

from cxr.comparison.champion import CHAMPION_ALIAS, champion_summary, update_champion
from cxr.comparison.leaderboard import evaluated_runs, leaderboard
from cxr.tracking.store import use_experiment


def crown(name: str, experiment_id: str, fingerprint: str = "data-a") -> dict:
    """update_champion as compare calls it: on the leaderboard of the experiment's runs."""
    board = leaderboard(evaluated_runs(experiment_id), fingerprint, "test_accuracy")
    return update_champion(name, board, "test_accuracy", fingerprint, experiment_id)


def champion_run(name: str) -> str:
    return MlflowClient().get_model_version_by_alias(name, CHAMPION_ALIAS).run_id


def test_the_champion_follows_the_leaderboards_best_and_says_why(tmp_path, store):
    experiment_id = use_experiment("cxr-champion", tmp_path, store)
    first, _ = log_run(experiment_id, "vgg16", "data-a", 0.80, with_model=True)
    # the first leaderboard crowns its best
    status = crown("cxr-test", experiment_id)
    assert status["action"] == "promoted" and status["version"] == 1
    assert champion_summary("cxr-test", status) == (
        f"Champion `cxr-test@champion`: promoted vgg16 run {first[:8]} as version 1, the first "
        "champion: the leaderboard's best by test_accuracy (0.8000)"
    )
    # a worse model joins the leaderboard: the champion is still its best and stays
    worse, _ = log_run(experiment_id, "resnet50", "data-a", 0.4848, with_model=True)
    status = crown("cxr-test", experiment_id)
    assert status["action"] == "kept" and status["reason"] == (
        f"kept version 1 (vgg16 run {first[:8]}): it is the leaderboard's best by test_accuracy "
        "(0.8000)"
    )
    assert champion_run("cxr-test") == first
    # a better one takes the alias, and the line names both figures and the old version
    better, _ = log_run(experiment_id, "mobilenetv2", "data-a", 0.9899, with_model=True)
    status = crown("cxr-test", experiment_id)
    assert status["action"] == "promoted" and status["version"] == 2
    assert status["reason"] == (
        f"promoted mobilenetv2 run {better[:8]} as version 2: the leaderboard's best by "
        f"test_accuracy (0.9899); version 1 (vgg16 run {first[:8]}) had 0.8000"
    )
    champion = MlflowClient().get_model_version_by_alias("cxr-test", CHAMPION_ALIAS)
    assert champion.run_id == better and champion.tags["data_fingerprint"] == "data-a"


def test_the_last_model_trained_is_not_crowned_when_the_leaderboard_ranks_another_first(
    tmp_path, store
):
    # given a sweep whose best model finished first and a weaker one last (the workspace's run)
    experiment_id = use_experiment("cxr-champion-order", tmp_path, store)
    best, _ = log_run(experiment_id, "compact_cnn", "data-a", 0.9667, with_model=True)
    last, last_uri = log_run(experiment_id, "densenet121", "data-a", 0.8667, with_model=True)
    # when compare runs with no champion yet, then the leaderboard's best is crowned
    status = crown("cxr-order", experiment_id)
    assert status["action"] == "promoted" and champion_run("cxr-order") == best
    # and an alias left on a weaker run of the same data (as a parallel experiment's compare
    # could leave it) moves back to the best, reusing the best's registered version
    client = MlflowClient()
    weaker = client.create_model_version("cxr-order", last_uri, run_id=last)
    client.set_registered_model_alias("cxr-order", CHAMPION_ALIAS, weaker.version)
    status = crown("cxr-order", experiment_id)
    assert status["action"] == "promoted" and status["version"] == 1
    assert champion_run("cxr-order") == best
    assert len(client.search_model_versions("name = 'cxr-order'")) == 2


def test_a_collapsed_or_unlogged_best_is_passed_over_and_the_line_says_why(tmp_path, store):
    experiment_id = use_experiment("cxr-champion-eligible", tmp_path, store)
    learned, _ = log_run(experiment_id, "resnet18", "data-a", 0.70, with_model=True)
    collapsed, _ = log_run(experiment_id, "mobilenetv2", "data-a", 0.95, with_model=True)
    MlflowClient().set_tag(collapsed, "collapsed", "true")
    unlogged, _ = log_run(experiment_id, "vgg16", "data-a", 0.90, with_model=False)
    log_run(experiment_id, "ensemble", "data-a", 0.99, with_model=True)
    status = crown("cxr-eligible", experiment_id)
    assert status["action"] == "promoted" and champion_run("cxr-eligible") == learned
    assert status["reason"] == (
        f"promoted resnet18 run {learned[:8]} as version 1, the first champion: the "
        f"leaderboard's best by test_accuracy (0.7000) (mobilenetv2 run {collapsed[:8]} "
        f"collapsed; vgg16 run {unlogged[:8]} has no logged model (re-run its evaluate))"
    )


def test_with_no_eligible_run_the_champion_stays_and_the_line_says_so(tmp_path, store):
    experiment_id = use_experiment("cxr-champion-none", tmp_path, store)
    held, _ = log_run(experiment_id, "vgg16", "data-a", 0.70, with_model=True)
    assert crown("cxr-none", experiment_id)["action"] == "promoted"
    # on new data only a collapsed run was scored
    collapsed, _ = log_run(experiment_id, "resnet50", "data-b", 0.50, with_model=True)
    MlflowClient().set_tag(collapsed, "collapsed", "true")
    status = crown("cxr-none", experiment_id, fingerprint="data-b")
    assert status["action"] == "not_eligible" and status["reason"] == (
        "not eligible: no run of the leaderboard can be champion (resnet50 run "
        f"{collapsed[:8]} collapsed); version 1 (vgg16 run {held[:8]}) stays champion"
    )
    assert champion_run("cxr-none") == held
    # and with no champion at all, the line says there is none yet
    assert crown("cxr-nobody", experiment_id, "data-c")["reason"] == (
        "not eligible: no run of the leaderboard can be champion; no champion yet"
    )


def test_a_champion_scored_on_other_data_is_kept_and_the_line_says_how_to_move_it(tmp_path, store):
    # given a champion registered while the data was data-a
    experiment_id = use_experiment("cxr-champion-data", tmp_path, store)
    held, _ = log_run(experiment_id, "vgg16", "data-a", 0.95, with_model=True)
    assert crown("cxr-data", experiment_id)["action"] == "promoted"
    # when the leaderboard of the new data (data-b) is written
    fresh, _ = log_run(experiment_id, "vgg19", "data-b", 0.60, with_model=True)
    status = crown("cxr-data", experiment_id, fingerprint="data-b")
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
    status = crown("cxr-foreign", experiment_id, fingerprint="data-b")
    assert status["action"] == "kept" and status["reason"].startswith(
        "kept version 1 (run eeeeeeee): its run is not in this MLflow store"
    )


def test_champion_summary_names_the_alias_and_the_reason():
    status = {"action": "kept", "reason": "kept version 3 (vgg16 run 1a2b3c4d): ..."}
    assert champion_summary("cxr", status) == (
        "Champion `cxr@champion`: kept version 3 (vgg16 run 1a2b3c4d): ..."
    )
