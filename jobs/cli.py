"""``python -m jobs <step>``: every pipeline step as one command line.

The same command runs as a local process, in a Docker container or in a Kubernetes pod. Each
step reads and writes the partitions of its ``--date`` only, logs progress to stderr, and ends
with one JSON result line (see :mod:`jobs.shared.result`).
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import date as Date
from functools import wraps
from pathlib import Path
from typing import Annotated, Optional

import typer

from jobs.shared.result import JobError, MissingInput, emit

app = typer.Typer(
    help="Fraud-detection pipeline jobs. Each step takes the logical --date it works on.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DateOpt = Annotated[str, typer.Option("--date", help="Logical date, YYYY-MM-DD.")]
RunIdOpt = Annotated[str, typer.Option("--run-id", help="Identifier of this run (the Airflow run id).")]


def _check_date(value: str) -> str:
    try:
        Date.fromisoformat(value)
    except ValueError as exc:
        raise JobError(f"--date {value!r} is not a YYYY-MM-DD date") from exc
    return value


def step(fn):
    """Wrap a command: logging, clear errors with an exit code, one JSON result line."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        logging.basicConfig(
            level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        for noisy in ("py4j", "great_expectations", "evidently", "mlflow", "alembic", "urllib3", "botocore",
                      "onnxscript", "onnx_ir", "torch"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        from jobs.shared import cost

        meter = cost.begin()
        try:
            if "date" in kwargs and kwargs["date"] is not None:
                _check_date(kwargs["date"])
            result = fn(*args, **kwargs)
            if isinstance(result, dict) and fn.__name__ not in UNMETERED:
                result["cost"] = _costed(result, meter.cost(result), fn.__name__, kwargs.get("date"))
            emit(result)
        except JobError as exc:
            sys.stderr.write(f"ERROR: {exc}\n")
            raise typer.Exit(exc.exit_code) from None
        finally:
            meter.stop()

    return wrapper


UNMETERED = {"summary", "generate"}  # a report of the others' costs, and the test data's maker


def _costed(result: dict, measured: dict, step: str, date: str | None) -> dict:
    """The job's cost, with what a skip saved (the cost its record kept of the work), logged and kept."""
    saved = result.pop("saved", None) if result.get("skipped") else None
    if saved:
        measured["saved_cpu_s"] = round(max(0.0, float(saved.get("cpu_s", 0)) - measured["cpu_s"]), 3)
        measured["saved_wall_s"] = round(max(0.0, float(saved.get("wall_s", 0)) - measured["wall_s"]), 3)
    measured["skipped"] = bool(result.get("skipped"))
    logging.getLogger("jobs.cost").info(
        "cost of %s: %.1f s wall, %.1f CPU s, peak %.0f MB%s%s", step, measured["wall_s"], measured["cpu_s"],
        measured["peak_rss_mb"], f", {measured['rows']} rows" if "rows" in measured else "",
        f"; the skip saved {measured['saved_cpu_s']:.1f} CPU s" if saved else "")
    try:
        from jobs.settings import get_settings
        from jobs.storage import costs

        settings = get_settings()
        costs.record(_lake(), step, date, measured, settings.airflow_dag_id, settings.airflow_run_id,
                     settings.airflow_task_id)
    except Exception as exc:  # noqa: BLE001 - the job succeeded; its cost is in its result anyway
        logging.getLogger("jobs.cost").warning("cost not kept: %s", exc)
    return measured


def _lake():
    from jobs.storage.lake import get_lake

    return get_lake()


def _settings():
    from jobs.settings import get_settings

    return get_settings()


@app.command()
@step
def generate(
    date: DateOpt,
    days: Annotated[int, typer.Option(help="How many days ending at --date.")] = 1,
    rows_per_day: Annotated[int, typer.Option(help="Transactions per day.")] = 3400,
    seed: Annotated[int, typer.Option(help="Seed of the card population and the days.")] = 7,
    cards: Annotated[int, typer.Option(help="Size of the card population (transactions spread over it).")] = 3000,
    fraud_rate: Annotated[float, typer.Option(help="Share of fraudulent transactions.")] = 0.02,
    drift: Annotated[float, typer.Option(help="0 = the usual world, 1 = strongly drifted.")] = 0.0,
    bad_rows: Annotated[int, typer.Option(help="Rows per day to break (contract violations).")] = 0,
    name: Annotated[str, typer.Option(help="Object name suffix, for extra deliveries of a day.")] = "",
):
    """Generate synthetic transactions into the lake's raw/ zone (one CSV object per day)."""
    from jobs.devkit.generate import generate_day, inject_bad_rows
    from jobs.shared import layout
    from jobs.shared.dates import Window

    lake = _lake()
    written, unchanged = [], []
    for d in Window.ending(date, days).days():
        frame = generate_day(d, rows_per_day, seed=seed, n_cards=cards, fraud_rate=fraud_rate, drift=drift,
                             delivery=name)
        if bad_rows:
            frame = inject_bad_rows(frame, bad_rows, seed=seed)
        key = layout.raw_object(d, f"transactions-{d}{('-' + name) if name else ''}.csv")
        data = frame.to_csv(index=False).encode()
        if lake.exists(key):
            if lake.read_bytes(key) == data:
                unchanged.append(key)
                continue
            raise JobError(f"{lake.uri_of(key)} already exists with other content; raw objects are never "
                           "modified: deliver under another --name")
        lake.write_bytes(key, data)
        written.append(key)
    logging.getLogger("jobs.devkit.generate").info("wrote %d raw objects, %d already present", len(written),
                                                   len(unchanged))
    return {"written": [lake.uri_of(k) for k in written], "unchanged": len(unchanged),
            "rows": rows_per_day * days, "raw": lake.uri_of(layout.RAW_TRANSACTIONS)}


@app.command()
@step
def ingest(date: DateOpt, run_id: RunIdOpt):
    """Stage raw objects delivered up to --date and not yet ingested as a bronze batch."""
    from jobs.steps.ingest import ingest as run

    s = _settings()
    not_after = _not_after(s)
    if Date.fromisoformat(date) > not_after.date():
        raise MissingInput(f"--date {date} is later than now ({not_after:%Y-%m-%d %H:%M} UTC with the allowed clock "
                           f"skew of {s.clock_skew_minutes} min): nothing can have been delivered for it yet")
    return run(_lake(), date, run_id, s.claim_ttl_hours, s.max_object_mb << 20, s.max_decompressed_mb << 20,
               s.batch_rows, not_after=not_after, max_read_attempts=s.max_read_attempts)


def _not_after(s):
    """The latest moment a delivery may name: the clock at the job's start plus the allowed skew (UTC, naive)."""
    from datetime import UTC, datetime, timedelta

    return (datetime.now(UTC) + timedelta(minutes=s.clock_skew_minutes)).replace(tzinfo=None)


@app.command()
@step
def validate(
    date: DateOpt,
    run_id: RunIdOpt,
    fail_on_rejection: Annotated[bool, typer.Option(
        help="Exit with code 3 when an object is rejected. --no-fail-on-rejection reports the rejections in "
             "the result instead (exit 0), so the DAG can pass the landed dates on before it stops.")] = True,
):
    """Validate the run's bronze batch with Great Expectations; silver, quarantine and ledger (Delta tables)."""
    from jobs.quality.contract import contract_parameters
    from jobs.steps.validate import validate_batch

    s = _settings()
    return {"date": date, **validate_batch(_lake(), run_id, s.expectations_dir, s.max_bad_row_share,
                                           contract_parameters(s.max_delivery_lag_days, s.clock_skew_minutes),
                                           fail_on_rejection=fail_on_rejection, batch_rows=s.batch_rows,
                                           not_after=_not_after(s))}


@app.command()
@step
def features(
    date: DateOpt,
    start: Annotated[Optional[str], typer.Option(help="First date to build (default: --date).")] = None,
    run_id: RunIdOpt = "",
    force: Annotated[bool, typer.Option(help="Run even when the inputs equal those of the last success "
                                              "(which otherwise skips, saying so).")] = False,
):
    """Build point-in-time gold features with Spark for [--start, --date]."""
    from jobs.steps.features import build_gold

    s = _settings()
    if start:
        _check_date(start)
    return build_gold(_lake(), start or date, date, s.spark_master, s.spark_driver_memory, s.expectations_dir,
                      s.spark_staging_dir, run_id=run_id, code_version=s.resolved_code_version, force=force)


@app.command()
@step
def online(
    date: DateOpt,
    force: Annotated[bool, typer.Option(help="Load every day of the window, even those the store holds unchanged.")
                     ] = False,
):
    """Load silver's 7 days up to --date into the online store (the scoring service's batch layer)."""
    from jobs.steps.online import load_online

    return load_online(_lake(), date, _settings(), force=force)


@app.command()
@step
def deploy(reason: Annotated[str, typer.Option(help="Why (recorded in the log).")] = ""):
    """Tell the running scoring services to serve the champion, and check each with a known transaction."""
    from jobs.steps.deploy import deploy as run

    logging.getLogger("jobs.steps.deploy").info("deploying the champion: %s", reason or "asked by hand")
    return run(_settings())


@app.command()
@step
def train(
    date: DateOpt,
    run_id: RunIdOpt = "",
    trigger: Annotated[str, typer.Option(help="Why this run: manual, schedule or drift.")] = "manual",
    force: Annotated[bool, typer.Option(help="Run even when the inputs equal those of the last success "
                                              "(which otherwise skips, saying so).")] = False,
):
    """Train the PyTorch model on the window ending at --date and register it in MLflow.

    The same feature rows, code and parameters as the version this date last trained register
    nothing (the result names that version, skipped); --force trains anyway.
    """
    from jobs.steps.train import train as run

    return run(_lake(), date, _settings(), trigger=trigger, airflow_run_id=run_id, force=force)


@app.command()
@step
def evaluate(
    date: DateOpt,
    model_version: Annotated[str, typer.Option(help="Registered version to evaluate.")],
    force: Annotated[bool, typer.Option(help="Recompute even when the inputs equal those of the last evaluation "
                                              "of this version (whose verdict is otherwise reused).")] = False,
):
    """Score challenger and champion on the frozen holdout and run the promotion gate."""
    from jobs.steps.evaluate import evaluate as run

    return run(_lake(), date, _settings(), model_version, force=force)


@app.command()
@step
def promote(model_version: Annotated[str, typer.Option(help="Version that passed its gate.")]):
    """Move the champion alias to a version whose gate passed."""
    from jobs.steps.promote import promote as run

    return run(_settings(), model_version)


@app.command()
@step
def challenger(model_version: Annotated[str, typer.Option(help="Version that passed its gate.")]):
    """Put a gated version on live trial: the challenger alias (shadow or canary, PIPELINE_LIVE_EVALUATION)."""
    from jobs.steps.live import stage

    return stage(_settings(), model_version)


@app.command()
@step
def guardrails(
    run_id: RunIdOpt = "",
    model_version: Annotated[Optional[str], typer.Option(help="The challenger to watch (default: @challenger; "
                                                              "pinned for --run-id at its first try).")] = None,
):
    """Where the challenger's live trial stands: baking, tripped, passed, insufficient or gone."""
    from jobs.steps.live import guardrails as run

    return run(_settings(), _lake(), run_id, model_version)


@app.command()
@step
def retire(
    model_version: Annotated[str, typer.Option(help="The challenger to take off live traffic.")],
    reason: Annotated[str, typer.Option(help="Why: recorded on it and on the champion.")] = "",
):
    """Take a challenger off live traffic (its alias removed), the reason recorded on both versions."""
    from jobs.steps.live import retire as run

    return run(_settings(), model_version, reason)


@app.command()
@step
def rollback(
    expected_version: Annotated[Optional[str], typer.Option(
        help="The champion you mean to replace; if the champion is another version by now, nothing "
             "changes (default: the current champion).")] = None,
    reason: Annotated[str, typer.Option(help="Why: recorded on both model versions and in the log.")] = "",
    actor: Annotated[str, typer.Option(help="Who asked (recorded with the reason).")] = "",
    restore_version: Annotated[Optional[str], typer.Option(
        help="The version this rollback means to restore (pinned with --expected-version): when it already is the "
             "champion, an earlier try swapped, and only a record cut short is completed.")] = None,
):
    """Restore the previous champion (compare-and-set on the expected champion)."""
    from jobs.steps.promote import rollback as run

    return run(_settings(), expected=expected_version, reason=reason, actor=actor or os.environ.get("USER", ""),
               restore=restore_version or None, lake=_lake())


@app.command()
@step
def decision(
    model_version: Annotated[str, typer.Option(help="The gated challenger decided on.")],
    decision: Annotated[str, typer.Option(help="promote, keep or rollback (or the form's labels).")],
    by: Annotated[str, typer.Option(help="Who decided.")] = "",
    reason: Annotated[str, typer.Option(help="Why.")] = "",
):
    """Record a person's promotion decision (who, why, when) on the challenger's version in MLflow."""
    from jobs.steps.promote import record_decision

    return record_decision(_settings(), model_version, decision, by, reason)


@app.command("gate-keys")
@step
def gate_keys():
    """Print a new Ed25519 key pair for the gate's verdicts: the private half for the evaluate job only
    (PIPELINE_GATE_SIGNING_KEY), the public half for every job (PIPELINE_GATE_PUBLIC_KEY)."""
    from jobs.storage.verdict import generate_keypair

    private, public = generate_keypair()
    return {"PIPELINE_GATE_SIGNING_KEY": private, "PIPELINE_GATE_PUBLIC_KEY": public}


@app.command()
@step
def champion(run_id: Annotated[str, typer.Option(
        "--run-id", help="Pin the answer for this run: its later tries read the same versions.")] = ""):
    """Show which versions hold the champion and previous-champion aliases."""
    from jobs.steps.promote import champion as run

    return run(_settings(), _lake() if run_id else None, pin_run=run_id)


@app.command()
@step
def score(
    date: DateOpt,
    start: Annotated[Optional[str], typer.Option(help="First date to score (default: --date).")] = None,
    run_id: RunIdOpt = "",
    force: Annotated[bool, typer.Option(help="Run even when the inputs equal those of the last success "
                                              "(which otherwise skips, saying so).")] = False,
):
    """Score [--start, --date] with the champion's ONNX model on onnxruntime."""
    from jobs.shared.dates import date_range
    from jobs.steps.score import score as run

    return run(_lake(), date_range(_check_date(start) if start else date, date), _settings(), run_id=run_id,
               force=force)


@app.command()
@step
def drift(
    date: DateOpt,
    days: Annotated[int, typer.Option(help="Days of recent data ending at --date.")] = 1,
    force: Annotated[bool, typer.Option(help="Run even when the inputs equal those of the last success "
                                              "(which otherwise skips, saying so).")] = False,
):
    """Compare recent features with the champion's training reference (Evidently)."""
    from jobs.steps.drift import check_drift

    return check_drift(_lake(), date, _settings(), days=days, force=force)


@app.command()
@step
def ledger(
    status: Annotated[Optional[str], typer.Option(help="Only entries with this status (ingested, rejected_file, "
                                                        "rejected_rows).")] = None,
    format: Annotated[str, typer.Option("--format", help="table (for people) or json (one object per line).")] = (
        "table"),
):
    """List what was ingested: object, content hash, status, row counts, broken rules, run."""
    import json

    from jobs.storage.ledger import read_ledger

    if format not in ("table", "json"):
        raise JobError(f"--format {format!r}: use table or json")
    entries = [e for e in read_ledger(_lake()) if status is None or e.get("status") == status]
    if format == "json":
        fields = ("key", "sha256", "status", "rows_delivered", "rows_silver", "rows_quarantined", "broken_rules",
                  "detail", "run_id", "ingested_at", "silver_version", "size", "tag")
        lines = [json.dumps({k: e.get(k) for k in fields}, sort_keys=True) for e in entries]
    else:
        header = f"{'ingested_at':<26} {'status':<14} {'delivered':>9} {'silver':>7} {'quarant.':>8}  run / object"
        lines = [header] + [
            f"{e.get('ingested_at', ''):<26} {e.get('status', ''):<14} {e.get('rows_delivered') or 0:>9} "
            f"{e.get('rows_silver') or 0:>7} {e.get('rows_quarantined') or 0:>8}  {e['run_id']} / {e['key']} "
            f"({e['sha256'][:12]})"
            for e in entries
        ]
    sys.stdout.write("\n".join(lines) + ("\n" if lines else ""))
    return {"entries": len(entries), "rows_delivered": sum(e.get("rows_delivered") or 0 for e in entries),
            "rows_silver": sum(e.get("rows_silver") or 0 for e in entries),
            "rows_quarantined": sum(e.get("rows_quarantined") or 0 for e in entries)}


@app.command()
@step
def maintain(
    retention_hours: Annotated[Optional[int], typer.Option(
        help="Keep the files table versions of the last N hours read (default PIPELINE_VACUUM_RETENTION_HOURS)."
    )] = None,
    dry_run: Annotated[bool, typer.Option(help="Only list what the vacuum would delete.")] = False,
):
    """Compact, checkpoint and vacuum every Delta table of the lake (old files go only here)."""
    from jobs.shared import layout
    from jobs.storage import tables

    hours = _settings().vacuum_retention_hours if retention_hours is None else retention_hours
    lake = _lake()
    done = [tables.maintain(lake, name, hours, dry_run=dry_run) for name in layout.TABLES]
    for d in done:
        logging.getLogger("jobs.storage.tables").info("%s", d)
    return {"retention_hours": hours, "tables": done}


@app.command()
@step
def quarantine(run_id: Annotated[Optional[str], typer.Option(help="Only this ingestion run.")] = None):
    """Show what is in quarantine: rejected files with reasons, rejected rows counted by rule."""
    from jobs.storage.quarantine import quarantine_report, render

    report = quarantine_report(_lake(), run_id)
    sys.stdout.write(render(report) + "\n")
    return {"files": len(report["files"]), "rows": sum(sum(c.values()) for c in report["rows"].values())}


@app.command()
@step
def replay(
    date: DateOpt,
    file: Annotated[Path, typer.Option(help="The fixed file to deliver again.")],
):
    """Deliver a fixed file for --date as a new raw object; the next ingestion picks it up."""
    from jobs.storage.quarantine import replay as run

    return run(_lake(), file, date)


@app.command()
@step
def summary(date: DateOpt):
    """Summarise the pipeline's state for --date and write run-summary.json."""
    from jobs.steps.summary import build_summary

    return build_summary(_lake(), date, _settings())


@app.command("mlflow-access")
@step
def mlflow_access(
    pipeline_password: Annotated[str, typer.Option(
        envvar="MLFLOW_PIPELINE_PASSWORD", show_default=False,
        help="Password of the jobs' identity (from the environment, never the command line).")],
    promoter_password: Annotated[str, typer.Option(
        envvar="MLFLOW_PROMOTER_PASSWORD", show_default=False,
        help="Password of the promotion identity (from the environment).")],
    pipeline_user: Annotated[str, typer.Option(help="The jobs' MLflow user.")] = "pipeline",
    promoter_user: Annotated[str, typer.Option(help="The MLflow user that moves aliases.")] = "promoter",
):
    """Create the MLflow users of a server run with --app-name fraud-auth (as an admin; idempotent)."""
    from services.mlflow_auth import setup_access

    settings = _settings()
    uri = settings.resolved_tracking_uri
    if not uri.startswith(("http://", "https://")):
        raise JobError(f"mlflow-access needs a tracking server (http[s]://), not {uri}")
    return setup_access(uri, settings.model_name, pipeline_user, pipeline_password, promoter_user, promoter_password)


def main() -> None:
    app()
