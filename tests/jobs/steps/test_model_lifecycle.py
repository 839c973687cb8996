"""Train -> evaluate -> gate -> promote -> rollback with real PyTorch, ONNX and MLflow (temp store)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.settings import Settings
from jobs.shared.result import JobError
from jobs.steps.evaluate import evaluate
from jobs.steps.promote import promote, rollback
from jobs.steps.train import train
from jobs.storage.registry import alias_version, mlflow_client

END = "2026-03-14"


@pytest.fixture(scope="module")
def gold_lake(tmp_path_factory):
    """12 days of features built by the real jobs (generate, ingest, validate, Spark features)."""
    state = tmp_path_factory.mktemp("lifecycle")
    env = {"PIPELINE_STATE_DIR": str(state), "PATH": "/usr/bin:/bin", "TQDM_DISABLE": "1",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    import os

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}, **env}
    for args in (["generate", "--date", END, "--days", "12", "--rows-per-day", "700"],
                 ["ingest", "--date", END, "--run-id", "r1"], ["validate", "--date", END, "--run-id", "r1"],
                 ["features", "--start", "2026-03-03", "--date", END]):
        out = subprocess.run([sys.executable, "-m", "jobs", *args], env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-2000:]
    return state


def test_worse_challenger_is_refused_better_is_promoted_and_rollback_restores(gold_lake, monkeypatch):
    from jobs.steps import evaluate as evaluation
    from jobs.storage.lake import LocalLake

    monkeypatch.setattr(evaluation, "HOLDOUT_BATCH_ROWS", 1000)  # the holdout in many record batches

    settings = Settings(state_dir=gold_lake, holdout_days=4, max_epochs=12, bootstrap_resamples=200)
    lake = LocalLake((gold_lake / "lake").as_uri())
    client = mlflow_client(settings)

    # An under-trained first champion (2 epochs), so that a fully trained challenger is truly better.
    first = train(lake, END, Settings(state_dir=gold_lake, holdout_days=4, max_epochs=2, bootstrap_resamples=200))
    gate = evaluate(lake, END, settings, first["model_version"])
    assert gate["passed"] and gate["champion_version"] is None  # first-run policy: floors decide
    tags = client.get_model_version("fraud-detector", first["model_version"]).tags
    assert len(tags["data_snapshot"]) == len(tags["feature_snapshot"]) == 16
    # Scored batch by batch, the holdout gives the figures of scoring it loaded whole: every row counted.
    from jobs.ml.model import classification_metrics
    from jobs.storage.registry import load_bundle, read_gold

    whole = read_gold(lake, tags["holdout_dates"].split(","))
    assert gate["challenger_metrics"] == pytest.approx(classification_metrics(
        whole["is_fraud"].to_numpy(), load_bundle(client, settings, first["model_version"]).predict(whole)))
    assert gate["challenger_metrics"]["rows"] == len(whole) > 1000
    assert_lineage_reproduces_the_training_frame(lake, tags, settings)
    assert tags["gate_report"].endswith(f"v{first['model_version']}.md") and tags["train_window"]
    promote(settings, first["model_version"])
    assert alias_version(client, settings, "champion") == first["model_version"]

    worse = train(lake, END, settings, permute_labels=True)
    gate = evaluate(lake, END, settings, worse["model_version"])
    assert not gate["passed"]
    assert not gate["checks"]["beats_champion"]
    assert gate["comparison"]["ci_high"] < 0  # clearly worse, not a coin flip
    report = (gold_lake / "lake" / "reports" / "gate" / f"date={END}" / f"v{worse['model_version']}.md").read_text()
    assert "| beats_champion |" in report and "FAIL" in report and "## Slices (holdout)" in report
    with pytest.raises(JobError, match="did not pass its gate"):
        promote(settings, worse["model_version"])
    assert alias_version(client, settings, "champion") == first["model_version"]
    # A person's decision, as the approval form words it, is recorded on the version.
    from jobs.steps.promote import record_decision

    record_decision(settings, worse["model_version"], "Keep the champion", "ana", "the gate says it is worse")
    tags = client.get_model_version("fraud-detector", worse["model_version"]).tags
    assert (tags["decision"], tags["decided_by"], tags["decision_reason"]) == (
        "keep", "ana", "the gate says it is worse")
    with pytest.raises(JobError, match="unknown decision"):
        record_decision(settings, worse["model_version"], "ship it", "ana", "")

    better = train(lake, END, Settings(state_dir=gold_lake, holdout_days=4, max_epochs=20, seed=7,
                                       bootstrap_resamples=200))
    gate = evaluate(lake, END, settings, better["model_version"])
    assert gate["passed"], gate["verdict"]
    promote(settings, better["model_version"])
    assert alias_version(client, settings, "champion") == better["model_version"]
    assert alias_version(client, settings, "previous-champion") == first["model_version"]

    done = rollback(settings, expected=better["model_version"], reason="INC-7: alert volume doubled", actor="oncall")
    assert done["changed"] and alias_version(client, settings, "champion") == first["model_version"]
    assert alias_version(client, settings, "previous-champion") == better["model_version"]
    restored = client.get_model_version("fraud-detector", first["model_version"]).tags
    assert (restored["rollback_reason"], restored["rollback_by"]) == ("INC-7: alert volume doubled", "oncall")
    replaced = client.get_model_version("fraud-detector", better["model_version"]).tags
    assert replaced["rolled_back_reason"] == "INC-7: alert volume doubled"
    # The same rollback again (a retried task): the champion is no longer the expected one, so the
    # toggle is not pulled a second time.
    again = rollback(settings, expected=better["model_version"], reason="INC-7: alert volume doubled")
    assert not again["changed"] and alias_version(client, settings, "champion") == first["model_version"]


def test_a_stale_gate_cannot_promote(gold_lake):
    """Compare-and-set: a version gated against an older champion is refused."""
    settings = Settings(state_dir=gold_lake, holdout_days=4, max_epochs=3, bootstrap_resamples=50,
                        non_inferiority_margin=1.0)
    from jobs.storage.lake import LocalLake

    lake = LocalLake((gold_lake / "lake").as_uri())
    client = mlflow_client(settings)
    a = train(lake, END, settings)
    b = train(lake, END, settings, force=True)  # the same inputs again: only forced does it train
    assert evaluate(lake, END, settings, a["model_version"])["passed"]
    assert evaluate(lake, END, settings, b["model_version"])["passed"]  # both gated against the same champion
    promote(settings, a["model_version"])
    with pytest.raises(JobError, match="re-evaluate before promoting"):
        promote(settings, b["model_version"])
    assert alias_version(client, settings, "champion") == a["model_version"]


def test_distributed_training_with_torchrun_on_cpu(gold_lake, monkeypatch):
    """Two processes, gloo backend, DistributedDataParallel: launched by the local runner via torchrun."""
    import logging

    from pipeline.execution.runners import JobSpec, Resources, get_runner

    monkeypatch.setenv("PIPELINE_STATE_DIR", str(gold_lake))
    monkeypatch.setenv("PIPELINE_HOLDOUT_DAYS", "4")
    monkeypatch.setenv("PIPELINE_MAX_EPOCHS", "4")
    spec = JobSpec("train", ["--date", END, "--trigger", "manual"], Resources(processes=2))
    assert spec.command[:5] == ["python", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    result = get_runner("local").run(spec, logging.getLogger("test"))
    assert result["world_size"] == 2 and result["onnx_max_abs_diff"] <= 1e-4
    client = mlflow_client(Settings(state_dir=gold_lake))
    run = client.get_run(result["mlflow_run_id"])
    assert run.data.params["world_size"] == "2"
    assert client.get_model_version("fraud-detector", result["model_version"]).tags["onnx_sha256"]


def test_unchanged_inputs_are_skipped_and_force_runs_anyway(gold_lake):
    """Train, features, score and drift on the inputs of their last success do nothing, say so, and
    register or publish nothing (evaluate reuses its verdict); a changed input or --force runs.
    Through the real command line."""
    import os

    from jobs.shared import layout
    from jobs.shared.result import parse_result_line
    from jobs.storage import tables
    from jobs.storage.lake import LocalLake

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")},
           "PIPELINE_STATE_DIR": str(gold_lake), "PIPELINE_HOLDOUT_DAYS": "4", "PIPELINE_MAX_EPOCHS": "2",
           "PIPELINE_SEED": "23"}

    def job(*args):
        out = subprocess.run([sys.executable, "-m", "jobs", *args], env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-3000:]
        results = [parse_result_line(x) for x in out.stdout.splitlines()]
        return [r for r in results if r is not None][-1], out.stderr

    lake = LocalLake((gold_lake / "lake").as_uri())
    client = mlflow_client(Settings(state_dir=gold_lake))
    versions = lambda: len(client.search_model_versions("name='fraud-detector'"))  # noqa: E731

    first, _ = job("train", "--date", END)
    assert not first.get("skipped")
    before = versions()
    again, log = job("train", "--date", END)
    assert again["skipped"] and again["model_version"] == first["model_version"]
    assert "unchanged since run" in again["skip_reason"] and "unchanged since run" in log
    assert versions() == before  # no new version, so nothing to gate or promote
    env["PIPELINE_MAX_EPOCHS"] = "3"  # a parameter changed: trains
    changed, _ = job("train", "--date", END)
    assert not changed.get("skipped") and versions() == before + 1
    forced, _ = job("train", "--date", END, "--force")
    assert not forced.get("skipped") and versions() == before + 2

    gold = tables.version(lake, layout.GOLD_FEATURES)
    built, _ = job("features", "--start", "2026-03-12", "--date", END)  # a range not built yet: builds
    assert not built.get("skipped") and tables.version(lake, layout.GOLD_FEATURES) == gold + 1
    same, log = job("features", "--start", "2026-03-12", "--date", END)
    assert same["skipped"] and same["dates"] == built["dates"] and "unchanged since run" in log
    skipped_build = same
    assert tables.version(lake, layout.GOLD_FEATURES) == gold + 1  # no Spark, no commit
    # Gold of the range rewritten behind its back: the build's outputs changed, so it builds again.
    frame = tables.read(lake, layout.GOLD_FEATURES, dates=[END])
    import pyarrow as pa

    tables.replace_partitions(lake, layout.GOLD_FEATURES, pa.Table.from_pandas(frame, preserve_index=False), [END])
    rebuilt, _ = job("features", "--start", "2026-03-12", "--date", END)
    assert not rebuilt.get("skipped")
    # A range build also records each of its days: a later run of one day (a partition's run) skips.
    day, log = job("features", "--date", END)
    assert day["skipped"] and day["dates"] == [END] and "unchanged since run" in log

    lenient = Settings(state_dir=gold_lake, holdout_days=4, bootstrap_resamples=50, non_inferiority_margin=1.0)
    assert evaluate(lake, END, lenient, changed["model_version"])["passed"]
    promote(lenient, changed["model_version"])
    scored, _ = job("score", "--date", END)
    assert not scored.get("skipped")
    same, log = job("score", "--date", END)
    assert same["skipped"] and same["predictions_version"] == scored["predictions_version"]
    assert "unchanged since run" in log
    assert evaluate(lake, END, lenient, forced["model_version"])["passed"]
    promote(lenient, forced["model_version"])
    rescored, _ = job("score", "--date", END)  # a new champion: scored again
    assert not rescored.get("skipped") and rescored["model_version"] == forced["model_version"]
    again, _ = job("score", "--date", END, "--force")
    assert not again.get("skipped") and again["predictions_version"] > rescored["predictions_version"]
    ranged, _ = job("score", "--start", "2026-03-13", "--date", END)
    assert not ranged.get("skipped")
    day, _ = job("score", "--date", "2026-03-13")
    assert day["skipped"] and day["dates"] == ["2026-03-13"]
    assert day["predictions_version"] == ranged["predictions_version"]

    # Evaluating an unchanged version reuses its verdict and says so; the task is not skipped (a
    # promotion that failed after the gate can be retried from it). Gate tags changed behind its
    # back, or --force, recompute.
    env.update(PIPELINE_NON_INFERIORITY_MARGIN="1.0", PIPELINE_BOOTSTRAP_RESAMPLES="50")
    version = forced["model_version"]
    gated, _ = job("evaluate", "--date", END, "--model-version", version)
    assert not gated.get("reused")
    reused, log = job("evaluate", "--date", END, "--model-version", version)
    assert reused["reused"] and not reused.get("skipped") and reused["verdict"] == gated["verdict"]
    assert "unchanged since run" in log and "reusing its verdict" in log
    client.set_model_version_tag("fraud-detector", version, "gate_passed", "tampered")
    regated, _ = job("evaluate", "--date", END, "--model-version", version)
    assert not regated.get("reused")
    assert client.get_model_version("fraud-detector", version).tags["gate_passed"] == str(gated["passed"]).lower()
    recomputed, _ = job("evaluate", "--date", END, "--model-version", version, "--force")
    assert not recomputed.get("reused")

    # A drift check of an unchanged window skips; --force checks again.
    checked, _ = job("drift", "--date", END)
    assert not checked.get("skipped")
    same, log = job("drift", "--date", END)
    assert same["skipped"] and same["drift_share"] == checked["drift_share"] and "unchanged since run" in log
    rechecked, _ = job("drift", "--date", END, "--force")
    assert not rechecked.get("skipped")

    # Drift over time: each checked day is one point of the monitor run's metrics (MLflow charts);
    # the forced re-check of the same day added no second point.
    from datetime import date

    step = (date.fromisoformat(END) - date(1970, 1, 1)).days
    monitor = rechecked["monitor_run_id"]
    assert [(m.step, m.value) for m in client.get_metric_history(monitor, "drift_share")] == \
        [(step, checked["drift_share"])]
    day_before, _ = job("drift", "--date", "2026-03-13")
    assert day_before["monitor_run_id"] == monitor
    assert sorted(m.step for m in client.get_metric_history(monitor, "drift_share")) == [step - 1, step]
    metrics = client.get_run(monitor).data.metrics
    assert {"prediction_drift_score", "champion_version", "drifted_columns"} <= set(metrics)
    assert any(name.startswith("feature_drift.") for name in metrics)

    # What each job cost is in its result; a skip says what it saved (the cost of the work it found
    # done), and the run summary adds the date's jobs up and logs one MLflow series per step.
    spark, skip = built["cost"], skipped_build["cost"]  # the gold build above, and the same build skipped
    assert spark["rows"] == built["rows"] > 0 and spark["cpu_s"] > skip["cpu_s"] > 0 and spark["wall_s"] > 0
    assert spark["peak_rss_mb"] > skip["peak_rss_mb"]  # Spark's JVM (a child) counts in the process tree
    assert skip["skipped"] and skip["saved_cpu_s"] > 0 and same["cost"]["saved_cpu_s"] > 0  # the drift skip's too
    assert checked["cost"]["rows"] == checked["current_rows"]
    for _ in range(2):  # a second summary adds no second point
        job("summary", "--date", END)
    summary = json.loads((gold_lake / "run-summary.json").read_text())["cost"]
    assert summary["steps"]["features"]["saved_cpu_s"] > 0 and summary["steps"]["drift"]["skipped"] >= 1
    assert summary["total"]["estimate_usd"] > 0 and summary["steps"]["train"]["jobs"] >= 4
    (series,) = client.search_runs([client.get_experiment_by_name("fraud-pipeline-cost").experiment_id],
                                   "tags.step = 'train'")
    assert [(m.step, m.value) for m in client.get_metric_history(series.info.run_id, "cpu_s")] == [
        (step, summary["steps"]["train"]["cpu_s"])]


def test_the_registry_fails_closed(gold_lake, tmp_path):
    """Only "the model or the alias does not exist" means no champion. A registry that answers 503
    or drops the connection (a fault proxy in front of a real MLflow server) fails scoring, the
    gate and promotion as retryable (exit 1) and changes nothing: no "no champion", no first-model
    gate, no compare-and-set that passes. A champion alias moved by hand to a version that never
    passed its gate is refused by scoring and drift (exit 4) unless the logged override is set, and
    a bundle whose preprocessing file changed is refused. Through the real command line."""
    import os
    import socket
    import time
    import urllib.request

    from faultproxy import FaultProxy

    from jobs.shared import layout
    from jobs.storage import tables
    from jobs.storage.lake import LocalLake

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = Settings(state_dir=gold_lake)
    client = mlflow_client(settings)  # the registry itself, for the test's own reads and hand edits
    lake = LocalLake((gold_lake / "lake").as_uri())
    with FaultProxy(f"http://127.0.0.1:{port}") as proxy:
        proxy_port = proxy.url.rsplit(":", 1)[-1]
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1", "--backend-store-uri", settings.resolved_tracking_uri,
             "--default-artifact-root", settings.mlflow_artifact_root,
             "--allowed-hosts", f"127.0.0.1:{port},127.0.0.1:{proxy_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"})
        try:
            for _ in range(120):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                    break
                except OSError:
                    time.sleep(0.5)
            env = {**{k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")},
                   "PIPELINE_STATE_DIR": str(gold_lake), "PIPELINE_HOLDOUT_DAYS": "4",
                   "PIPELINE_BOOTSTRAP_RESAMPLES": "50", "PIPELINE_MLFLOW_TRACKING_URI": proxy.url,
                   "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}

            def job(*args, **extra):
                return subprocess.run([sys.executable, "-m", "jobs", *args], env={**env, **extra},
                                      capture_output=True, text=True)

            champion = alias_version(client, settings, "champion")
            versions = client.search_model_versions("name='fraud-detector'")
            challenger = str(max((mv for mv in versions if mv.tags.get("gate_passed") == "true"
                                  and str(mv.version) != champion), key=lambda mv: int(mv.version)).version)
            ungated = [str(mv.version) for mv in versions if mv.tags.get("gate_passed") != "true"]
            assert champion and ungated
            ok = job("champion")
            assert ok.returncode == 0, ok.stderr[-2000:]  # through the proxy, all is well

            predictions = tables.version(lake, layout.PREDICTIONS)
            tags_before = client.get_model_version("fraud-detector", challenger).tags
            for action in (503, "reset"):
                proxy.clear()
                proxy.fail("GET", r"/registered-models/alias", action)
                for args in (["score", "--date", END, "--force"], ["drift", "--date", END, "--force"],
                             ["evaluate", "--date", END, "--model-version", challenger, "--force"],
                             ["promote", "--model-version", challenger]):
                    out = job(*args)
                    assert out.returncode == 1, (action, args, out.returncode, out.stderr[-2000:])
                    assert "model registry" in out.stderr, out.stderr[-2000:]
            proxy.clear()
            assert tables.version(lake, layout.PREDICTIONS) == predictions  # nothing scored
            assert alias_version(client, settings, "champion") == champion  # nothing promoted
            after = client.get_model_version("fraud-detector", challenger).tags
            assert {t: after.get(t) for t in ("gate_passed", "gate_verdict", "gate_champion_version")} == \
                {t: tags_before.get(t) for t in ("gate_passed", "gate_verdict", "gate_champion_version")}

            # The alias moved by hand to a version that never passed its gate.
            client.set_registered_model_alias("fraud-detector", "champion", ungated[-1])
            for args in (["score", "--date", END, "--force"], ["drift", "--date", END, "--force"]):
                out = job(*args)
                assert out.returncode == 4 and "its gate" in out.stderr, (args, out.stderr[-2000:])
            out = job("score", "--date", END, "--force", PIPELINE_ALLOW_UNGATED_CHAMPION="true")
            assert out.returncode == 0 and "OVERRIDE" in out.stderr, out.stderr[-2000:]
            client.set_registered_model_alias("fraud-detector", "champion", champion)
        finally:
            server.terminate()
            server.wait(timeout=30)

    # The bundle's preprocessing file changed behind the registry's back: refused, like the ONNX file.
    run_id = client.get_model_version("fraud-detector", champion).run_id
    pre_file = Path(client.get_run(run_id).info.artifact_uri.removeprefix("file://")) / "bundle" / "preprocessing.json"
    original = pre_file.read_text()
    pre_file.write_text(original + " ")  # one byte more: same content to a JSON reader, another file
    try:
        out = job("score", "--date", END, "--force", PIPELINE_MLFLOW_TRACKING_URI="")
        assert out.returncode == 1 and "preprocessing.json" in out.stderr and "tampered" in out.stderr, \
            out.stderr[-2000:]
    finally:
        pre_file.write_text(original)


def test_a_rollback_run_swaps_once_even_cleared_and_a_record_cut_short_is_completed(gold_lake):
    """The run pins what it replaces and restores; a cleared re-run reads the pin, not the champion it
    left; a try that died between the alias move and its record gets the record, not a second swap;
    the days the replaced version scored are named for re-scoring."""
    from jobs.steps.promote import champion
    from jobs.steps.score import score
    from jobs.storage.lake import LocalLake

    lake = LocalLake((gold_lake / "lake").as_uri())
    quick = Settings(state_dir=gold_lake, holdout_days=4, max_epochs=3, bootstrap_resamples=50,
                     non_inferiority_margin=1.0)
    client = mlflow_client(quick)
    versions = []
    for seed in (11, 12):
        trained = train(lake, END, Settings(state_dir=gold_lake, holdout_days=4, max_epochs=3, seed=seed))
        assert evaluate(lake, END, quick, trained["model_version"])["passed"]
        promote(quick, trained["model_version"])
        versions.append(trained["model_version"])
    old, new = versions
    assert score(lake, [END], quick)["model_version"] == new

    run = Settings(**{**quick.model_dump(), "airflow_run_id": "manual__rb1"})
    pin = champion(run, lake, pin_run="manual__rb1")
    assert (pin["champion_version"], pin["previous_champion_version"]) == (new, old)
    done = rollback(run, expected=pin["champion_version"], restore=pin["previous_champion_version"], reason="INC-8",
                    lake=lake)
    assert done["changed"] and (done["rescore_start"], done["rescore_end"]) == (END, END)
    assert alias_version(client, run, "champion") == old

    cleared = champion(run, lake, pin_run="manual__rb1")  # the whole run cleared and re-run
    assert (cleared["champion_version"], cleared["previous_champion_version"]) == (new, old)
    again = rollback(run, expected=cleared["champion_version"], restore=cleared["previous_champion_version"],
                     reason="INC-8", lake=lake)
    assert not again["changed"] and not again["record_completed"]
    assert alias_version(client, run, "champion") == old  # never swapped back

    # A second rollback run whose first try died right after moving the champion alias.
    crashed = Settings(**{**quick.model_dump(), "airflow_run_id": "manual__rb2"})
    pin = champion(crashed, lake, pin_run="manual__rb2")
    assert (pin["champion_version"], pin["previous_champion_version"]) == (old, new)
    client.set_registered_model_alias("fraud-detector", "champion", new)  # the swap's first write, then SIGKILL
    retry = rollback(crashed, expected=old, restore=new, reason="INC-9", actor="oncall", lake=lake)
    assert not retry["changed"] and retry["record_completed"]
    assert (alias_version(client, crashed, "champion"), alias_version(client, crashed, "previous-champion")) == \
        (new, old)
    restored = client.get_model_version("fraud-detector", new).tags
    assert (restored["rollback_reason"], restored["rollback_airflow_run_id"]) == ("INC-9", "manual__rb2")
    assert client.get_model_version("fraud-detector", old).tags["rolled_back_airflow_run_id"] == "manual__rb2"


def test_a_promotion_cut_short_after_the_alias_moved_is_recorded_by_its_retry(gold_lake):
    from jobs.shared.names import PROMOTED_AT_TAG
    from jobs.storage.lake import LocalLake

    lake = LocalLake((gold_lake / "lake").as_uri())
    quick = Settings(state_dir=gold_lake, holdout_days=4, max_epochs=3, bootstrap_resamples=50,
                     non_inferiority_margin=1.0)
    client = mlflow_client(quick)
    trained = train(lake, END, Settings(state_dir=gold_lake, holdout_days=4, max_epochs=3, seed=21))
    version = trained["model_version"]
    assert evaluate(lake, END, quick, version)["passed"]
    client.set_registered_model_alias("fraud-detector", "champion", version)  # the alias moved, then SIGKILL
    assert PROMOTED_AT_TAG not in client.get_model_version("fraud-detector", version).tags
    retry = promote(quick, version)
    assert retry["record_completed"] and not retry["changed"]
    mv = client.get_model_version("fraud-detector", version)
    assert PROMOTED_AT_TAG in mv.tags and "promoted to @champion" in mv.description
    assert "record_completed" not in promote(quick, version)  # recorded: a further retry is a plain no-op


def test_late_rows_rebuild_and_rescore_every_day_whose_look_back_holds_them(gold_lake):
    """From the command line: a late delivery for END-2 rebuilds END-2 and the two built days after it
    (their 24 h and 7 d windows hold the late rows), and scoring those days scores them again."""
    import os

    import pandas as pd

    from jobs.devkit.generate import generate_day
    from jobs.shared import layout
    from jobs.storage import tables
    from jobs.storage.lake import LocalLake

    lake = LocalLake((gold_lake / "lake").as_uri())
    late_day, day_after = "2026-03-12", "2026-03-13"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")},
           "PIPELINE_STATE_DIR": str(gold_lake), "TQDM_DISABLE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}

    def job(*args):
        out = subprocess.run([sys.executable, "-m", "jobs", *args], env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-3000:]
        import json

        return json.loads(out.stdout.strip().splitlines()[-1].split("::pipeline-result::")[-1])

    assert job("score", "--start", late_day, "--date", END)["dates"] == [late_day, day_after, END]
    before = tables.read(lake, layout.GOLD_FEATURES, dates=[day_after]).set_index("transaction_id")
    scored_before = tables.read(lake, layout.PREDICTIONS, dates=[day_after]).set_index("transaction_id")
    busy = before.sort_values("card_txn_count_24h").index[-20:]  # cards that spend on the day after
    late = generate_day(late_day, 20, delivery="late")
    late["card_id"] = before.loc[busy, "card_id"].to_numpy()
    late["timestamp"] = f"{late_day}T23:30:00Z"
    lake.write_bytes(layout.raw_object(late_day, "late.csv"), late.to_csv(index=False).encode())
    job("ingest", "--date", END, "--run-id", "late")
    assert job("validate", "--date", END, "--run-id", "late")["silver_dates"] == [late_day]
    built = job("features", "--date", late_day)
    assert built["dates"] == [late_day, day_after, END] and not built.get("skipped"), built
    after = tables.read(lake, layout.GOLD_FEATURES, dates=[day_after]).set_index("transaction_id")
    assert (after.loc[busy, "card_txn_count_7d"] > before.loc[busy, "card_txn_count_7d"]).all()
    rescored = job("score", "--start", late_day, "--date", END)
    assert not rescored.get("skipped") and rescored["dates"] == [late_day, day_after, END]
    scored_after = tables.read(lake, layout.PREDICTIONS, dates=[day_after]).set_index("transaction_id")
    changed = (scored_after.loc[busy, "fraud_probability"] - scored_before.loc[busy, "fraud_probability"]).abs()
    assert (changed > 0).any() and pd.Index(scored_after.index).is_unique


def test_only_the_gate_can_write_a_verdict_that_promotion_and_scoring_trust(gold_lake):
    """Tags are editable by the pipeline identity every job has (ingestion parses untrusted files): a
    forged or copied verdict does not verify, so promotion and scoring refuse it."""
    from jobs.shared.names import SIGNATURE_TAG
    from jobs.steps.score import score
    from jobs.storage.lake import LocalLake
    from jobs.storage.registry import UngatedChampion, gated_challenger
    from jobs.storage.verdict import VerdictUnsigned, generate_keypair

    lake = LocalLake((gold_lake / "lake").as_uri())
    quick = Settings(state_dir=gold_lake, holdout_days=4, max_epochs=2, bootstrap_resamples=50)
    client = mlflow_client(quick)
    champion = alias_version(client, quick, "champion")
    bad = train(lake, END, quick, permute_labels=True)["model_version"]
    assert not evaluate(lake, END, quick, bad)["passed"]
    assert client.get_model_version("fraud-detector", bad).tags[SIGNATURE_TAG]  # failed verdicts are signed too
    client.set_model_version_tag("fraud-detector", bad, "gate_passed", "true")  # forged by the pipeline identity
    with pytest.raises(VerdictUnsigned, match="do not match the gate's signature"):
        promote(quick, bad)
    good = client.get_model_version("fraud-detector", champion).tags
    for tag in ("gate_verdict", "gate_champion_version", SIGNATURE_TAG):  # a passing version's verdict, copied
        client.set_model_version_tag("fraud-detector", bad, tag, good[tag])
    with pytest.raises(VerdictUnsigned):
        promote(quick, bad)
    client.set_registered_model_alias("fraud-detector", "champion", bad)  # moved by hand in the MLflow UI
    try:
        with pytest.raises(UngatedChampion, match="not the gate's"):
            score(lake, [END], quick)
    finally:
        client.set_registered_model_alias("fraud-detector", "champion", champion)
    assert alias_version(client, quick, "champion") == champion
    client.set_registered_model_alias("fraud-detector", "challenger", bad)  # a trial started by hand
    try:
        with pytest.raises(UngatedChampion, match="a challenger has no override") as refused:
            gated_challenger(client, quick)
        assert "PIPELINE_ALLOW_UNGATED_CHAMPION" not in str(refused.value)
    finally:
        client.delete_registered_model_alias("fraud-detector", "challenger")
    # Where keys are configured (the stack, Kubernetes), a job without the private half cannot sign.
    _, public = generate_keypair()
    with pytest.raises(JobError, match="only the evaluate job holds"):
        evaluate(lake, END, Settings(state_dir=gold_lake, holdout_days=4, bootstrap_resamples=50,
                                     gate_public_key=public), bad, force=True)


LIVE = dict(holdout_days=4, max_epochs=12, bootstrap_resamples=100, live_evaluation="shadow",
            guardrail_bake_minutes=0, guardrail_min_requests=300, guardrail_trip_requests=100,
            serving_decisions_flush_seconds=0.2)
# The offline gate is not under test here: lenient, so that a bad model reaches live traffic (what
# the guardrails are for: a holdout that does not stand for the traffic).
LENIENT_GATE = dict(non_inferiority_margin=1.0, min_pr_auc=0.0, min_roc_auc=0.0, min_threshold_precision=0.0,
                    min_threshold_recall=0.0)


def _delivered_day(lake, prefix: str, dates: list[str] = (END,)) -> list[dict]:
    """The day's transactions as a terminal sends them, under new ids (each trial scores its own)."""
    from jobs.shared import layout
    from jobs.storage import tables
    from services.scoring.app import FIELDS

    day = tables.read(lake, layout.SILVER_TRANSACTIONS, dates=list(dates)).sort_values("timestamp")
    txns = []
    for row in day.to_dict("records"):
        txn = {f: row[f] for f in FIELDS}
        txn["timestamp"] = row["timestamp"].strftime("%Y-%m-%dT%H:%M:%SZ")
        txn["amount"] = float(txn["amount"])
        txn["transaction_id"] = f"{prefix}{row['transaction_id']}"
        txns.append(txn)
    return txns


def _serve(settings, txns, folder, name) -> list[dict]:
    """Every transaction through the real service (in process), ten a request; the answers. The
    decisions log is flushed when the service stops, as at a shutdown."""
    from fastapi.testclient import TestClient

    from jobs.storage.online_store import SqliteStore
    from services.scoring.app import create_app
    from services.scoring.keys import ApiKeys

    app = create_app(settings, store=SqliteStore(folder / f"{name}.db"))
    app.state.champion.refresh()
    key = ApiKeys(settings.serving_dir).create(name)
    answers = []
    with TestClient(app) as http:
        for i in range(0, len(txns), 10):
            reply = http.post("/v1/score", json={"transactions": txns[i:i + 10]},
                              headers={"Authorization": f"Bearer {key}"})
            assert reply.status_code == 200, reply.text
            answers += reply.json()["results"]
    return answers


def _decisions(lake, prefix: str):
    from jobs.shared import layout
    from jobs.storage import tables

    frame = tables.read(lake, layout.DECISIONS)
    return frame[frame["transaction_id"].str.startswith(prefix)].set_index("transaction_id")


def test_live_trials_promote_a_good_challenger_and_take_a_shuffled_one_off_traffic(gold_lake, tmp_path):
    """Shadow: the challenger scores every request beside the champion, which alone answers; both
    answers land in the decisions log, one row per transaction. A challenger as good as the champion
    holds every guardrail and is promoted (its trial ends); one trained on shuffled labels trips on
    the same traffic and is taken off it, the reason on both versions and in its gate report."""
    from jobs.steps.live import guardrails, retire, stage
    from jobs.storage.lake import LocalLake

    lake = LocalLake((gold_lake / "lake").as_uri())
    live = Settings(state_dir=gold_lake, **LIVE, **LENIENT_GATE)
    client = mlflow_client(live)
    champion = alias_version(client, live, "champion")

    good = train(lake, END, Settings(state_dir=gold_lake, holdout_days=4, max_epochs=12, seed=23))["model_version"]
    gate = evaluate(lake, END, live, good)
    assert gate["passed"] and gate["live_evaluation"] == "shadow"  # the gate task branches to stage_challenger
    staged = stage(live, good)
    assert staged["mode"] == "shadow" and alias_version(client, live, "challenger") == good
    assert alias_version(client, live, "champion") == champion  # a trial moves no champion

    txns = _delivered_day(lake, "good_")
    answers = _serve(live, txns, tmp_path, "good")
    assert {a["model_version"] for a in answers} == {champion} and not any(a["replayed"] for a in answers)
    logged = _decisions(lake, "good_")
    assert len(logged) == len(txns) and logged.index.is_unique  # exactly one row per scored transaction
    assert set(logged["challenger_version"]) == {good} and logged["challenger_probability"].notna().all()
    assert set(logged["served_by"]) == {"champion"} and logged["challenger_error"].isna().all()
    served = {a["transaction_id"]: a["fraud_probability"] for a in answers}
    assert all(abs(served[t] - p) < 1e-12 for t, p in logged["champion_probability"].items())

    verdict = guardrails(live, lake, run_id="watch-good")
    assert verdict["state"] == "passed", verdict
    assert verdict["requests"] == len(txns) and all(c["passed"] for c in verdict["checks"])
    assert "recheck_after_seconds" not in verdict
    promote(live, good)
    assert alias_version(client, live, "champion") == good and alias_version(client, live, "challenger") is None

    bad = train(lake, END, Settings(state_dir=gold_lake, holdout_days=4, max_epochs=12, seed=5),
                permute_labels=True)["model_version"]
    assert evaluate(lake, END, live, bad)["passed"]  # the lenient gate lets it through
    stage(live, bad)
    txns = _delivered_day(lake, "bad_")
    answers = _serve(live, txns, tmp_path, "bad")
    assert {a["model_version"] for a in answers} == {good}  # every answer the champion's, all along
    verdict = guardrails(live, lake, run_id="watch-bad")
    assert verdict["state"] == "tripped", verdict
    tripped = {c["name"] for c in verdict["checks"] if not c["passed"]}
    assert "PSI of the scores" in tripped, verdict
    assert verdict["reason"].startswith("guardrail tripped: ") and "PSI of the scores" in verdict["reason"]
    assert guardrails(live, lake, run_id="watch-bad")["state"] == "tripped"  # a retry looks at the same evidence
    retired = retire(live, bad, verdict["reason"])
    assert retired["changed"] and alias_version(client, live, "challenger") is None
    assert not retire(live, bad, verdict["reason"])["changed"]  # a retry changes nothing
    assert alias_version(client, live, "champion") == good
    tags = client.get_model_version("fraud-detector", bad).tags
    assert tags["live_verdict"] == f"taken off live traffic: {verdict['reason']}"
    assert verdict["reason"] in client.get_model_version("fraud-detector", good).tags["live_challenger"]
    description = client.get_model_version("fraud-detector", bad).description
    assert description.count("taken off live traffic") == 1  # recorded once, retries or not
    report = (gold_lake / "lake" / "reports" / "gate" / f"date={END}" / f"v{bad}.md").read_text()
    assert "## Live trial (shadow)" in report and "TRIPPED" in report and "| beats_champion |" in report
    page = (gold_lake / "lake" / "reports" / "gate" / f"date={END}" / f"v{bad}.html").read_text()
    assert page.count("Live trial (shadow)") == 1 and "data:image/png;base64," in page  # the plots stay
    assert guardrails(live, lake, run_id="watch-bad-again")["state"] == "gone"  # nothing on trial now


def test_an_injected_fault_trips_a_guardrail_and_a_canary_serves_sticky_cards(gold_lake, tmp_path):
    """The challenger's path fails (errors) or slows (latency), a drill: every request is still
    answered by the champion, and the guardrail trips. A canary gives the challenger's decision to a
    sticky share of cards: each card's transactions all go one way."""
    from jobs.steps.live import guardrails, retire, stage
    from jobs.storage.lake import LocalLake

    lake = LocalLake((gold_lake / "lake").as_uri())
    base = Settings(state_dir=gold_lake, **LIVE)
    client = mlflow_client(base)
    champion = alias_version(client, base, "champion")
    # a gated version that is not the champion: the previous one
    trial = alias_version(client, base, "previous-champion")
    assert trial not in (None, champion)

    for name, fault, guardrail in (("errors", "errors=1.0", "error rate"), ("slow", "latency=25",
                                                                           "p99 model time (ms)")):
        drill = Settings(state_dir=gold_lake, challenger_fault=fault, **LIVE)
        stage(drill, trial)
        txns = _delivered_day(lake, f"{name}_")[:200]
        answers = _serve(drill, txns, tmp_path, name)
        assert len(answers) == len(txns) and {a["model_version"] for a in answers} == {champion}
        verdict = guardrails(drill, lake, run_id=f"watch-{name}")
        assert verdict["state"] == "tripped", verdict
        # its own guardrail trips (others may too: the trial version is an older, different model)
        assert guardrail in [c["name"] for c in verdict["checks"] if not c["passed"]], verdict
        retire(drill, trial, verdict["reason"])
    logged = _decisions(lake, "errors_")
    assert len(logged) == 200 and logged["challenger_error"].str.contains("injected fault").all()

    canary = Settings(state_dir=gold_lake, **{**LIVE, "live_evaluation": "canary"}, canary_share=0.5)
    assert stage(canary, trial)["mode"] == "canary"
    txns = _delivered_day(lake, "canary_")
    answers = {a["transaction_id"]: a for a in _serve(canary, txns, tmp_path, "canary")}
    logged = _decisions(lake, "canary_")
    assert len(logged) == len(txns) == len(answers) and logged.index.is_unique
    ways = logged.groupby("card_id")["served_by"].nunique()
    assert (ways == 1).all()  # sticky: a card's transactions all go one way
    share = (logged.groupby("card_id")["served_by"].first() == "challenger").mean()
    assert 0.3 < share < 0.7, share
    for tid, row in logged.iterrows():  # the answer given is the decision logged as served
        assert answers[tid]["model_version"] == (trial if row["served_by"] == "challenger" else champion)
        want = row["challenger_probability"] if row["served_by"] == "challenger" else row["champion_probability"]
        assert abs(answers[tid]["fraud_probability"] - want) < 1e-12
    verdict = guardrails(canary, lake, run_id="watch-canary")
    assert verdict["served_by_challenger"] == int((logged["served_by"] == "challenger").sum()) > 0
    retire(canary, trial, "canary test over")


def test_late_labels_tell_how_what_was_served_did_and_a_floor_asks_for_retraining(gold_lake, tmp_path):
    """The decisions of the trials above joined to silver's labels: per day and served version,
    precision, recall and PR-AUC of what was actually answered (computed here again from the two
    tables with deltalake and scikit-learn), logged as the monitor run's metrics; below the floor,
    the drift check asks for retraining."""
    from deltalake import DeltaTable
    from sklearn.metrics import average_precision_score

    from jobs.ml.drift import served_figures
    from jobs.steps.drift import check_drift
    from jobs.storage.decisions import served_with_labels
    from jobs.storage.lake import LocalLake
    from jobs.storage.monitoring import monitoring_run

    lake = LocalLake((gold_lake / "lake").as_uri())
    week = [f"2026-03-{d:02d}" for d in range(8, 15)]  # the label window (7 days) ending at END
    settings = Settings(state_dir=gold_lake, serving_decisions_flush_seconds=0.2)
    assert alias_version(mlflow_client(settings), settings, "challenger") is None  # the champion alone
    _serve(settings, _delivered_day(lake, "", week), tmp_path, "week")  # their own ids: silver has their labels
    figures = {(f["day"], f["version"]): f for f in served_figures(served_with_labels(lake, week))}
    decisions = DeltaTable(str(gold_lake / "lake" / "decisions")).to_pandas()
    labels = DeltaTable(str(gold_lake / "lake" / "silver" / "transactions")).to_pandas()[["transaction_id",
                                                                                          "is_fraud"]]
    joined = decisions.merge(labels, on="transaction_id")  # the trials' renamed ids have no label
    assert len(joined) == sum(f["labelled"] for k, f in figures.items() if k[0] != "all") > 4000
    for (day, version), rows in joined.groupby(["transaction_date", "served_version"]):
        canary = rows["served_by"] == "challenger"
        served = rows["challenger_probability"].where(canary, rows["champion_probability"])
        flagged = rows["challenger_flagged"].where(canary, rows["champion_flagged"]).astype(bool)
        got = figures[(day, version)]
        assert got["labelled"] == len(rows) and got["frauds"] == int(rows["is_fraud"].sum())
        if got["pr_auc"] is not None:
            assert abs(got["pr_auc"] - average_precision_score(rows["is_fraud"], served)) < 1e-12
        if got["recall"] is not None:
            assert got["recall"] == (flagged & rows["is_fraud"].astype(bool)).sum() / rows["is_fraud"].sum()

    settings = Settings(state_dir=gold_lake, served_min_pr_auc=0.999, retrain_cooldown_days=0)
    client = mlflow_client(settings)
    assert figures[("all", alias_version(client, settings, "champion"))]["frauds"] >= 30  # enough to act on
    champion = alias_version(client, settings, "champion")
    result = check_drift(lake, END, settings, force=True)
    summary = json.loads((gold_lake / "lake" / "reports" / "drift" / f"date={END}" / "drift.json").read_text())
    assert any(f["version"] == champion and f["day"] == "all" for f in summary["served"])
    assert result["retrain"] and f"PR-AUC of what v{champion} served" in result["decision"]
    history = client.get_metric_history(monitoring_run(client, settings), f"served_pr_auc.v{champion}")
    assert history and abs(history[-1].value - figures[("all", champion)]["pr_auc"]) < 1e-12
    # The report says what it compared: here the whole day; with a smaller bound, a seeded sample of it.
    assert summary["sample"]["compared_rows"] == summary["sample"]["window_rows"] == summary["current_rows"]
    assert not summary["sample"]["sampled"] and summary["sample"]["reference_rows"] == summary["reference_rows"]
    check_drift(lake, END, Settings(state_dir=gold_lake, drift_sample_rows=1000), days=3, force=True)
    sampled = json.loads((gold_lake / "lake" / "reports" / "drift" / f"date={END}" / "drift.json").read_text())
    assert sampled["window_start"] < END and sampled["sample"]["window_rows"] > 2 * summary["sample"]["window_rows"]
    assert sampled["sample"]["sampled"] and sampled["current_rows"] == sampled["sample"]["compared_rows"] == 1000


def test_scoring_refuses_a_tampered_onnx_file(gold_lake):
    from jobs.steps.score import score
    from jobs.storage.lake import LocalLake

    settings = Settings(state_dir=gold_lake)
    lake = LocalLake((gold_lake / "lake").as_uri())
    client = mlflow_client(settings)
    assert score(lake, [END], settings)["rows"] == 700  # the untouched champion scores
    champion = client.get_model_version_by_alias("fraud-detector", "champion")
    model_id = champion.source.removeprefix("models:/")  # MLflow 3: the version's logged model
    stored = client.get_logged_model(model_id).artifact_location.removeprefix("file://")
    onnx_file = next(Path(stored).rglob("*.onnx"))
    data = bytearray(onnx_file.read_bytes())
    data[-20] ^= 0xFF  # one flipped byte in the weights
    onnx_file.write_bytes(bytes(data))
    with pytest.raises(JobError, match="tampered or corrupt"):
        score(lake, [END], settings)


def assert_lineage_reproduces_the_training_frame(lake, tags, settings):
    """The table versions recorded with a model give its training rows back exactly (time travel),
    also after the tables moved on."""
    import pyarrow as pa

    from jobs.ml.training import feature_fingerprint, time_split
    from jobs.shared import layout
    from jobs.shared.dates import date_range
    from jobs.storage import tables
    from jobs.storage.registry import read_gold

    dates = date_range(*tags["train_window"].split(".."))
    gold_version, silver_version = int(tags["gold_version"]), int(tags["silver_version"])
    # The table moves on after training: gold is rebuilt for one date (here: with half its rows).
    latest = tables.read(lake, layout.GOLD_FEATURES, dates=[END])
    tables.replace_partitions(lake, layout.GOLD_FEATURES, pa.Table.from_pandas(latest.iloc[: len(latest) // 2],
                                                                               preserve_index=False), [END])
    assert tables.version(lake, layout.GOLD_FEATURES) > gold_version
    frame = read_gold(lake, dates, version=gold_version)
    assert feature_fingerprint(frame) == tags["feature_snapshot"]
    assert len(read_gold(lake, dates)) < len(frame)  # the latest version differs: time travel did the work
    silver = tables.read(lake, layout.SILVER_TRANSACTIONS, dates=dates, version=silver_version)
    assert sorted(silver["transaction_id"]) == sorted(frame["transaction_id"])
    _, _, holdout = time_split(frame, settings.holdout_days)
    assert ",".join(sorted(holdout["date"].unique())) == tags["holdout_dates"]
    tables.replace_partitions(lake, layout.GOLD_FEATURES, pa.Table.from_pandas(latest, preserve_index=False), [END])


def test_a_training_killed_mid_epoch_resumes_on_its_retry_to_the_same_model(gold_lake, tmp_path):
    """Preemption: the training process is SIGKILLed in the middle of an epoch (a spot node reclaimed).
    The retry of the same Airflow task resumes from the checkpoint in the lake and ends with the very
    model an uninterrupted training (same seed) ends with, registering exactly one version; once it is
    registered the checkpoint is gone."""
    import os
    import signal
    import time

    import torch

    from jobs.shared.names import BUNDLE_DIR
    from jobs.shared.result import parse_result_line
    from jobs.storage.checkpoints import checkpoint_key

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")},
           "PIPELINE_STATE_DIR": str(gold_lake), "PIPELINE_HOLDOUT_DAYS": "4", "PIPELINE_MAX_EPOCHS": "5",
           "PIPELINE_EARLY_STOPPING_PATIENCE": "5", "MLFLOW_DISABLE_TELEMETRY": "true",
           "PIPELINE_CHECKPOINT_MINUTES": "0.0001",  # a save after every batch: a kill finds one mid-epoch
           "PIPELINE_AIRFLOW_DAG_ID": "train_model", "PIPELINE_AIRFLOW_TASK_ID": "train"}
    command = [sys.executable, "-m", "jobs", "train", "--date", END, "--force"]

    def trained(run_id: str) -> tuple[dict, str]:
        out = subprocess.run(command, env={**env, "PIPELINE_AIRFLOW_RUN_ID": run_id}, capture_output=True,
                             text=True)
        assert out.returncode == 0, out.stderr[-3000:]
        return next(r for r in map(parse_result_line, out.stdout.splitlines()) if r), out.stderr

    reference, _ = trained("uninterrupted")
    client = mlflow_client(Settings(state_dir=gold_lake))
    versions = {str(mv.version) for mv in client.search_model_versions("name='fraud-detector'")}

    run_id = "scheduled__2026-03-14T00:00:00+00:00"
    checkpoint = gold_lake / "lake" / checkpoint_key(END, {}, "train_model", run_id, "train")
    proc = subprocess.Popen(command, env={**env, "PIPELINE_AIRFLOW_RUN_ID": run_id}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    killed_at = None
    while killed_at is None and proc.poll() is None:
        if checkpoint.exists():
            proc.send_signal(signal.SIGSTOP)  # frozen: the checkpoint read is the one a kill now leaves
            state = torch.load(checkpoint, weights_only=True)
            if state["epoch"] >= 2 and state["position"] > 0:
                proc.kill()
                killed_at = (state["epoch"], state["position"])
            proc.send_signal(signal.SIGCONT)
        time.sleep(0.005)
    proc.wait()
    assert killed_at and proc.returncode == -signal.SIGKILL, "the training ended before a mid-epoch checkpoint"
    assert {str(mv.version) for mv in client.search_model_versions("name='fraud-detector'")} == versions

    resumed, log = trained(run_id)  # the retry: the same command, the same run and task
    assert f"epoch {killed_at[0]} at row {killed_at[1]} (" in log, log[-3000:]
    assert {str(mv.version) for mv in client.search_model_versions("name='fraud-detector'")} == versions | {
        resumed["model_version"]}
    assert not checkpoint.exists()

    def weights(result: dict) -> dict:
        import mlflow

        mlflow.set_tracking_uri(f"sqlite:///{gold_lake}/mlflow/mlflow.db")
        path = mlflow.artifacts.download_artifacts(run_id=result["mlflow_run_id"],
                                                   artifact_path=f"{BUNDLE_DIR}/model_state.pt",
                                                   dst_path=str(tmp_path / result["mlflow_run_id"]))
        return torch.load(path, weights_only=True)

    ours, theirs = weights(resumed), weights(reference)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert resumed["onnx_sha256"] == reference["onnx_sha256"] and resumed["epochs"] == reference["epochs"]


def test_a_preemption_notice_saves_a_checkpoint_and_the_retry_resumes(gold_lake):
    """A spot node's notice is SIGTERM: the training saves its checkpoint at the next batch and fails
    retryably, saying so; the retry resumes from that batch and registers one version."""
    import os
    import signal
    import time

    from jobs.shared.result import parse_result_line
    from jobs.storage.checkpoints import checkpoint_key

    run_id = "scheduled__spot"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")},
           "PIPELINE_STATE_DIR": str(gold_lake), "PIPELINE_HOLDOUT_DAYS": "4", "PIPELINE_MAX_EPOCHS": "3",
           "MLFLOW_DISABLE_TELEMETRY": "true", "PIPELINE_AIRFLOW_DAG_ID": "train_model",
           "PIPELINE_AIRFLOW_TASK_ID": "train", "PIPELINE_AIRFLOW_RUN_ID": run_id}
    checkpoint = gold_lake / "lake" / checkpoint_key(END, {}, "train_model", run_id, "train")
    command = [sys.executable, "-m", "jobs", "train", "--date", END, "--force"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None:
        if checkpoint.exists():  # the first epoch's end: training is under way
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.01)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "preempted (SIGTERM) in epoch 2: checkpoint saved at row" in err, err[-3000:]
    assert checkpoint.exists()
    client = mlflow_client(Settings(state_dir=gold_lake))
    versions = {str(mv.version) for mv in client.search_model_versions("name='fraud-detector'")}
    out = subprocess.run(command, env=env, capture_output=True, text=True)
    assert out.returncode == 0 and "resuming from checkpoint" in out.stderr, out.stderr[-3000:]
    resumed = next(r for r in map(parse_result_line, out.stdout.splitlines()) if r)
    after = {str(mv.version) for mv in client.search_model_versions("name='fraud-detector'")}
    assert after == versions | {resumed["model_version"]} and not checkpoint.exists()
