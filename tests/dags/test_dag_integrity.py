"""Every DAG imports cleanly, fast, light, fully documented, with the expected graph and wiring."""

import ast
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from heavy import HEAVY

ROOT = Path(__file__).resolve().parents[2]
DAG_FILES = sorted((ROOT / "dags").glob("*.py"))
PARSE_BUDGET_S = 2.0  # per file, well above the ~0.1 s they take, far below the scheduler's 30 s loop

EXPECTED_EDGES = {
    "ingest_transactions": {("wait_for_raw", "ingest"), ("ingest", "validate"), ("validate", "announce_silver"),
                            ("validate", "stop_on_rejections")},
    "build_features": {("plan_dates", "features"), ("features", "online"), ("plan_dates", "online")},
    # ("evaluate", "promote"): promote takes the version from evaluate's result (an XComArg).
    "train_model": {("train", "evaluate"), ("evaluate", "gate"), ("gate", "promote"), ("gate", "keep_champion"),
                    ("evaluate", "promote"), ("gate", "stage_challenger"), ("evaluate", "stage_challenger")},
    "watch_challenger": {("guardrails", "route"), ("route", "retire_challenger"), ("route", "promote"),
                         ("route", "challenger_gone"), ("guardrails", "retire_challenger"), ("guardrails", "promote")},
    "score_transactions": {("plan_dates", "score")},
    "monitor_drift": {("drift", "decide"), ("decide", "signal_retraining"), ("drift", "signal_retraining")},
    "rollback_model": {("current_champion", "rollback"), ("rollback", "stale_predictions"),
                       ("stale_predictions", "rescore")},
    "maintain_lake": set(),
    "deploy_model": set(),
}
OPERATIONS_DAGS = {"rollback_model", "maintain_lake", "deploy_model",
                   "watch_challenger"}  # not about a date: no date in their forms


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == set(EXPECTED_EDGES)


def test_parse_time_budget(dagbag):
    for stat in dagbag.dagbag_stats:
        duration = stat.duration.total_seconds() if isinstance(stat.duration, timedelta) else stat.duration
        assert duration < PARSE_BUDGET_S, f"{stat.file} took {duration:.2f}s to parse"


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_no_heavy_imports_at_top_level(path):
    tree = ast.parse(path.read_text())
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            top.add(node.module.split(".")[0])
    assert not top & set(HEAVY), f"{path.name} imports {top & set(HEAVY)} at top level"


# Every optional setting a DAG file reads at parse time, switched on.
EVERY_OPTION_ON = {"PIPELINE_PROMOTION_APPROVAL": "true", "PIPELINE_TRAIN_PROCESSES": "2",
                   "PIPELINE_NOTIFY_EMAIL": "risk@example.com", "PIPELINE_PREDICTIONS_DEADLINE_MINUTES": "90",
                   "PIPELINE_SENSOR_DEFERRABLE": "true",
                   "PIPELINE_LAKE_EVENTS_QUEUE": "https://sqs.eu-west-1.amazonaws.com/123456789012/raw-events"}


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_dag_files_import_only_airflow_the_plugins_and_the_shared_contract(path):
    """Anywhere in the file, not only at its top: the DAG layer of the import contracts (pyproject.toml)."""
    named = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            named.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            named.add(node.module)
    allowed = set(sys.stdlib_module_names) | {"airflow", "pipeline"}
    wrong = {m for m in named if not (m.split(".")[0] in allowed or m == "jobs.shared" or m.startswith("jobs.shared."))}
    assert not wrong, f"{path.name} imports {sorted(wrong)}"


@pytest.mark.parametrize("options", [{}, EVERY_OPTION_ON], ids=["defaults", "every-option-on"])
@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_importing_a_dag_file_loads_no_heavy_module(path, options):
    """What the scheduler pays: import the file in a fresh interpreter and list heavy modules loaded."""
    code = (
        "import importlib.util, json, sys\n"
        f"sys.path.insert(0, {str(ROOT / 'plugins')!r})\n"
        f"spec = importlib.util.spec_from_file_location('dag_under_test', {str(path)!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, **options})
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_required_fields(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.doc_md and len(dag.doc_md) > 200, dag_id
        assert dag.tags and "fraud-detection" in dag.tags, dag_id
        assert dag.catchup is False, dag_id
        assert dag.start_date.tzinfo is not None, dag_id
        assert dag.timetable is not None, dag_id
        assert dag.params, f"{dag_id} has no trigger form"
        if dag.timetable is not None and dag_id not in OPERATIONS_DAGS:
            assert "date" in dag.params, f"{dag_id} has no date in its trigger form"
        for task in dag.tasks:
            assert task.owner == "ml-platform", (dag_id, task.task_id)
            assert task.retries >= 1, (dag_id, task.task_id)
            assert task.execution_timeout is not None, (dag_id, task.task_id)


def test_task_graphs(dagbag):
    for dag_id, edges in EXPECTED_EDGES.items():
        dag = dagbag.dags[dag_id]
        got = {(t.task_id, d) for t in dag.tasks for d in t.downstream_task_ids}
        assert got == edges, dag_id


def test_assets_chain_the_dags(dagbag):
    """Each consumer is scheduled on assets that some producer emits, named by lake URIs."""
    from pipeline import assets

    produced = {}
    for dag in dagbag.dags.values():
        for task in dag.tasks:
            for outlet in task.outlets:
                produced.setdefault(outlet.uri, set()).add(dag.dag_id)
    lake = assets.LAKE_URI
    assert produced[f"{lake}/silver/transactions"] == {"ingest_transactions"}
    assert produced[f"{lake}/gold/features"] == {"build_features"}
    assert produced[f"{lake}/predictions"] == {"score_transactions"}
    assert produced[f"{lake}/reports/drift"] == {"monitor_drift"}
    assert produced[assets.CHAMPION_MODEL.uri] == {"train_model", "rollback_model", "watch_challenger"}
    assert produced[assets.CHALLENGER_MODEL.uri] == {"train_model", "watch_challenger"}
    consumers = {
        "build_features": assets.SILVER_TRANSACTIONS,
        "score_transactions": assets.GOLD_FEATURES,
        "monitor_drift": assets.PREDICTIONS,
        "train_model": assets.DRIFT_SIGNAL,
        "deploy_model": assets.CHAMPION_MODEL,  # promotion and rollback
        "watch_challenger": assets.CHALLENGER_MODEL,  # a version put on live trial
    }
    for dag_id, asset in consumers.items():
        condition = dagbag.dags[dag_id].timetable.asset_condition
        assert asset.uri in _uris(condition), dag_id
    # deploy_model also loads (or drops) the challenger in every service when the trial starts or ends
    assert assets.CHALLENGER_MODEL.uri in _uris(dagbag.dags["deploy_model"].timetable.asset_condition)


def _uris(condition) -> set[str]:
    """Asset URIs inside an asset condition (Asset, AssetAll, AssetAny)."""
    if hasattr(condition, "objects"):
        return set().union(*(_uris(o) for o in condition.objects))
    return {condition.uri}


def test_promotion_and_rollback_share_a_pool_of_one(dagbag):
    assert dagbag.dags["train_model"].get_task("promote").pool == "model_promotion"
    assert dagbag.dags["rollback_model"].get_task("rollback").pool == "model_promotion"
    for task_id in ("promote", "retire_challenger"):
        assert dagbag.dags["watch_challenger"].get_task(task_id).pool == "model_promotion"
    assert dagbag.dags["train_model"].get_task("stage_challenger").pool == "model_promotion"


def test_a_watch_outlives_its_longest_wait(dagbag):
    """The guardrails task defers between looks; its timeout covers the whole watch, deferrals included."""
    from jobs.settings import Settings

    watch = dagbag.dags["watch_challenger"].get_task("guardrails")
    assert watch.execution_timeout > timedelta(hours=Settings().guardrail_max_wait_hours)


def test_training_declares_its_gpu_need(dagbag):
    train = dagbag.dags["train_model"].get_task("train")
    assert train.job_resources.gpu == 1


def _edges_with_approval(dag_id: str) -> set[tuple[str, str]]:
    """The task graph of a DAG file parsed in a fresh interpreter with PIPELINE_PROMOTION_APPROVAL=true."""
    code = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(ROOT / 'plugins')!r})\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"dag = DagBag(dag_folder={str(ROOT / 'dags' / (dag_id + '.py'))!r}).dags[{dag_id!r}]\n"
        "print(json.dumps(sorted([t.task_id, d] for t in dag.tasks for d in t.downstream_task_ids)))\n"
    )
    env = {**__import__("os").environ, "PIPELINE_PROMOTION_APPROVAL": "true"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return {tuple(e) for e in json.loads(out.stdout.strip().splitlines()[-1])}


def test_optional_human_approval_sits_between_gate_and_promote():
    edges = _edges_with_approval("train_model")
    assert edges == {("train", "evaluate"), ("evaluate", "gate"), ("gate", "approve_promotion"),
                     ("gate", "keep_champion"), ("approve_promotion", "record_decision"),
                     ("record_decision", "route_decision"), ("route_decision", "promote"),
                     ("route_decision", "keep_by_decision"), ("route_decision", "rollback_champion"),
                     # values passed on as XComArgs: the version, the champion compared with, who and why
                     ("evaluate", "promote"), ("evaluate", "record_decision"), ("evaluate", "rollback_champion"),
                     ("record_decision", "rollback_champion"), ("gate", "stage_challenger"),
                     ("evaluate", "stage_challenger")}


def test_with_approval_a_person_decides_after_the_live_trial():
    edges = _edges_with_approval("watch_challenger")
    assert edges == {("guardrails", "route"), ("route", "retire_challenger"), ("route", "approve_promotion"),
                     ("route", "challenger_gone"), ("approve_promotion", "follow"), ("follow", "record_approval"),
                     ("record_approval", "promote"), ("follow", "decline_challenger"),
                     ("guardrails", "retire_challenger"), ("guardrails", "promote"),
                     ("guardrails", "decline_challenger"), ("guardrails", "record_approval")}


def test_ingestion_runs_overlap(dagbag):
    """A nightly run waiting hours for a late delivery must not hold back another day's run; silver
    MERGE commits are optimistic (a conflict is redone), so validate needs no one-at-a-time limit."""
    dag = dagbag.dags["ingest_transactions"]
    assert dag.max_active_runs > 1
    assert dag.get_task("wait_for_raw").mode == "reschedule"  # waiting holds no worker slot
    assert dag.get_task("validate").max_active_tis_per_dag is None


def _longest_life(task) -> timedelta:
    """Every try running into its timeout, plus the (exponential) waits between tries."""
    tries = task.retries + 1
    waits = sum((task.retry_delay * (2 ** n) if task.retry_exponential_backoff else task.retry_delay
                 for n in range(task.retries)), timedelta())
    return task.execution_timeout * tries + waits


def test_a_claim_outlives_the_run_that_holds_it(dagbag):
    """A claim is taken by ingest and released by validate's ledger entry; it must never expire while
    the run that holds it may still be retrying, or a second run could take the object over."""
    from jobs.settings import Settings

    dag = dagbag.dags["ingest_transactions"]
    life = _longest_life(dag.get_task("ingest")) + _longest_life(dag.get_task("validate"))
    assert timedelta(hours=Settings().claim_ttl_hours) > life, life


def test_good_rows_flow_on_before_a_rejection_stops_the_run(dagbag):
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    dag = dagbag.dags["ingest_transactions"]
    announce, stop = dag.get_task("announce_silver"), dag.get_task("stop_on_rejections")
    assert [o.name for o in announce.outlets] == ["silver_transactions"] and not dag.get_task("validate").outlets
    assert stop.trigger_rule == "all_success" and announce.trigger_rule == "all_success"
    with pytest.raises(AirflowSkipException):  # nothing landed: no event, nothing downstream starts
        announce.python_callable({"silver_dates": []}, outlet_events={})
    from airflow.sdk.definitions.asset import AssetUniqueKey
    from airflow.sdk.execution_time.context import OutletEventAccessor

    events = {announce.outlets[0]: OutletEventAccessor(key=AssetUniqueKey.from_asset(announce.outlets[0]))}
    assert announce.python_callable({"silver_dates": ["2026-05-09", "2026-05-10"], "rows_silver": 5},
                                    outlet_events=events) == ["2026-05-09", "2026-05-10"]
    # One partition key per date that received rows: one features run per date downstream.
    assert events[announce.outlets[0]].partition_keys == {"2026-05-09", "2026-05-10"}
    assert events[announce.outlets[0]].extra["rows_silver"] == 5
    stop.python_callable({"rejected": []})
    with pytest.raises(AirflowFailException, match="bad.csv: rejected_rows"):
        stop.python_callable({"rejected": [{"key": "bad.csv"}], "rejection_message": "bad.csv: rejected_rows"})


@pytest.mark.parametrize("run_type, label", [("SCHEDULED", "scheduled"), ("MANUAL", "manual"),
                                             ("ASSET_TRIGGERED", "drift")])
def test_training_runs_are_labelled_by_what_started_them(dagbag, run_type, label):
    """Only drift_detected schedules train_model by asset, so asset-triggered means drift."""
    from types import SimpleNamespace

    from airflow.utils.types import DagRunType

    train = dagbag.dags["train_model"].get_task("train")
    context = {"dag_run": SimpleNamespace(run_type=DagRunType[run_type]), "params": {"force": False}}
    assert train.render_template(train.job_arguments, context) == ["--trigger", label, ""]  # "" is dropped
    forced = train.render_template(train.job_arguments, {**context, "params": {"force": True}})
    assert forced == ["--trigger", label, "--force"]


@pytest.mark.parametrize("configured", [True, False])
def test_people_are_told_only_when_configured(configured, tmp_path):
    """With PIPELINE_NOTIFY_EMAIL: every task mails its final failure, the gate's refusal, drift and a
    promotion mail the news, and the nightly run has a deadline; without it, no DAG carries any."""
    import os

    script = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
assert not bag.import_errors, bag.import_errors
names = lambda cbs: [type(c).__name__ for c in (cbs if isinstance(cbs, list) else [cbs] if cbs else [])]
out = {"failure": sorted({tuple(names(t.on_failure_callback)) for d in bag.dags.values() for t in d.tasks}),
       "success": {f"{d.dag_id}.{t.task_id}": names(t.on_success_callback) for d in bag.dags.values()
                   for t in d.tasks if t.on_success_callback},
       "deadline": [str(a.interval) for a in bag.dags["ingest_transactions"].deadline or []]}
print(json.dumps(out))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_NOTIFY")}
    if configured:
        env.update(PIPELINE_NOTIFY_EMAIL="risk-team@example.com", PIPELINE_PREDICTIONS_DEADLINE_MINUTES="90")
    out = subprocess.run([sys.executable, "-c", script, str(ROOT / "dags")], env=env, capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    if configured:
        assert found["failure"] == [["SmtpNotifier"]]  # every task of every DAG
        news = ("train_model.promote", "train_model.keep_champion", "train_model.stage_challenger",
                "monitor_drift.signal_retraining", "watch_challenger.promote", "watch_challenger.retire_challenger")
        assert found["success"] == {task: ["SmtpNotifier"] for task in news}
        assert found["deadline"] == ["1:30:00"]
    else:
        assert found == {"failure": [[]], "success": {}, "deadline": []}


def test_the_approval_form_offers_three_choices_and_its_answer_is_recorded():
    """What the person sees (the gate table, three choices, a reason) and what record_decision gets."""
    code = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(ROOT / 'plugins')!r})\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"dag = DagBag(dag_folder={str(ROOT / 'dags' / 'train_model.py')!r}).dags['train_model']\n"
        "approve, record = dag.get_task('approve_promotion'), dag.get_task('record_decision')\n"
        "answers = {'train': {'model_version': '7'}, 'evaluate': {'verdict': 'promote: better', "
        "'gate_table': '| check | value |', 'model_version': '7'}, "
        "'approve_promotion': {'chosen_options': ['Roll back the champion'], "
        "'params_input': {'reason': 'INC-9: too many alerts'}, 'responded_by_user': {'id': '1', 'name': 'ana'}}}\n"
        "class TI:\n"
        "    def xcom_pull(self, task_ids, key='return_value', **kwargs):\n"
        "        value = answers[task_ids]\n"
        "        return value if key == 'return_value' else value[key]\n"
        "ctx = {'ti': TI()}\n"
        "print(json.dumps({'options': approve.options, 'defaults': approve.defaults, 'params': list(approve.params),\n"
        "                  'body': approve.render_template(approve.body, ctx),\n"
        "                  'args': record.render_template(record.job_arguments, ctx)}))\n"
    )
    env = {**__import__("os").environ, "PIPELINE_PROMOTION_APPROVAL": "true"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["options"] == ["Promote", "Keep the champion", "Roll back the champion"]
    assert seen["defaults"] == ["Keep the champion"] and seen["params"] == ["reason"]
    assert "| check | value |" in seen["body"] and "file://" not in seen["body"]
    assert seen["args"] == ["--model-version", "7", "--decision=Roll back the champion", "--by=ana",
                            "--reason=INC-9: too many alerts"]
