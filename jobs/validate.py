"""Validation: run the raw-transactions contract (Great Expectations) on a bronze batch.

Every delivered row ends in exactly one place: silver (valid, first time seen) or quarantine
(with the rules it broke). A delivery whose bad share exceeds the threshold is quarantined
whole, and the job fails so the pipeline stops before features and training.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from jobs import lake as lk
from jobs import layout
from jobs.ingest import BATCH_MANIFEST
from jobs.result import DataRejected, JobError

log = logging.getLogger(__name__)

SUITE_FILE = "raw_transactions.json"
ROW_ID = "_row_id"
DUPLICATE_IN_SILVER = "transaction id already in silver (repeated delivery)"


def load_suite_json(expectations_dir: Path, name: str = SUITE_FILE) -> dict:
    """The reviewed suite JSON from ``expectations/``."""
    return json.loads((expectations_dir / name).read_text())


PARTITION_OFFSET = "_hours_from_partition"  # derived: timestamp minus the start of the delivery's date=


def to_typed(raw: pd.DataFrame, delivery_date: str | None = None) -> pd.DataFrame:
    """Cast as-delivered strings to contract types; unparseable values become null.

    With ``delivery_date`` (the ``date=`` partition the object was delivered under), adds
    ``_hours_from_partition``: how far each timestamp lies from the start of that day, which the
    contract bounds (late deliveries of a few days are normal, decades are not, the future is not).
    """
    typed = raw.copy()
    typed["amount"] = pd.to_numeric(raw["amount"], errors="coerce")
    ts = pd.to_datetime(raw["timestamp"], utc=True, errors="coerce", format="ISO8601")
    typed["timestamp"] = ts.dt.tz_localize(None)
    typed["is_fraud"] = pd.to_numeric(raw["is_fraud"], errors="coerce").astype("float64")
    if delivery_date is not None:
        start = pd.Timestamp(delivery_date)
        typed[PARTITION_OFFSET] = (typed["timestamp"] - start) / pd.Timedelta(hours=1)
    return typed


def contract_parameters(max_lag_days: int, clock_skew_minutes: int) -> dict:
    """Values of the ``$PARAMETER`` placeholders of the raw contract (configurable bounds)."""
    return {"min_hours_from_partition": -24.0 * max_lag_days,
            "max_hours_from_partition": 24.0 + clock_skew_minutes / 60.0}


class Contract:
    """A reviewed suite from ``expectations/``, run by a Great Expectations checkpoint.

    With ``docs_dir``, every run also renders Data Docs (HTML) into that folder.
    """

    def __init__(self, suite_json: dict, docs_dir: Path | None = None):
        logging.getLogger("great_expectations").setLevel(logging.WARNING)
        import great_expectations as gx
        from great_expectations.checkpoint import UpdateDataDocsAction

        self.context = gx.get_context(mode="ephemeral")
        source = self.context.data_sources.add_pandas("lake")
        definition = source.add_dataframe_asset(suite_json["name"]).add_batch_definition_whole_dataframe("whole")
        suite = gx.ExpectationSuite(**suite_json)
        if len(suite.expectations) != len(suite_json["expectations"]):
            # GX logs and skips expectations it cannot build; a contract must never shrink silently.
            built = {e.expectation_type for e in suite.expectations}
            unknown = sorted({e["type"] for e in suite_json["expectations"]} - built)
            raise JobError(f"suite {suite_json['name']!r} has expectations Great Expectations cannot build: {unknown}")
        suite = self.context.suites.add(suite)
        validation = self.context.validation_definitions.add(
            gx.ValidationDefinition(name=suite_json["name"], data=definition, suite=suite)
        )
        actions = []
        if docs_dir is not None:
            self.context.add_data_docs_site(site_name="lake", site_config={
                "class_name": "SiteBuilder",
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            })
            actions.append(UpdateDataDocsAction(name="data_docs", site_names=["lake"]))
        self.checkpoint = self.context.checkpoints.add(gx.Checkpoint(
            name=f"{suite_json['name']}_checkpoint", validation_definitions=[validation], actions=actions,
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [ROW_ID]},
        ))

    def failures(self, frame: pd.DataFrame, run_name: str = "batch",
                 parameters: dict | None = None) -> tuple[dict[int, list[str]], list[dict]]:
        """Map each failing row to the rules it broke; returns ``(reasons_by_row, expectation_summaries)``.

        Table-level expectations that fail (e.g. the column set) mark every row. ``parameters``
        fill the suite's ``$PARAMETER`` placeholders.
        """
        from great_expectations.core.run_identifier import RunIdentifier

        frame = frame.copy()
        frame[ROW_ID] = range(len(frame))
        outcome = self.checkpoint.run(batch_parameters={"dataframe": frame}, expectation_parameters=parameters,
                                      run_id=RunIdentifier(run_name=run_name))
        (result,) = outcome.run_results.values()
        reasons: dict[int, list[str]] = {}
        summaries = []
        for r in result.results:
            cfg = r.expectation_config
            rule = (cfg.meta or {}).get("rule") or cfg.type
            res = r.result or {}
            failing: list[int] = []
            if not r.success:
                if "unexpected_index_list" in res:
                    failing = [int(i[ROW_ID]) if isinstance(i, dict) else int(i) for i in res["unexpected_index_list"]]
                    if cfg.type == "expect_column_values_to_be_unique":
                        failing = _later_copies(frame, cfg.kwargs["column"], failing)
                else:
                    failing = list(range(len(frame)))
            for i in failing:
                reasons.setdefault(i, []).append(rule)
            summaries.append({"expectation": cfg.type, "column": cfg.kwargs.get("column"), "rule": rule,
                              "success": bool(r.success) or not failing, "failing_rows": len(failing)})
        return reasons, summaries


def row_failures(typed: pd.DataFrame, suite_json: dict) -> tuple[dict[int, list[str]], list[dict]]:
    """Run a suite once (no Data Docs); see :meth:`Contract.failures`."""
    return Contract(suite_json).failures(typed)


def _later_copies(frame: pd.DataFrame, column: str, rows: list[int]) -> list[int]:
    """Of duplicated rows, all but the first copy (the first one is kept)."""
    sub = frame.iloc[sorted(rows)]
    return [int(i) for i in sub.loc[sub.duplicated(column, keep="first"), ROW_ID]]


@dataclass
class ObjectOutcome:
    """What became of one delivered object (one ledger entry)."""

    key: str
    sha256: str
    rows_delivered: int
    rows_silver: int = 0
    rows_quarantined: int = 0
    status: str = "ingested"
    broken_rules: dict[str, int] = field(default_factory=dict)
    detail: str = ""
    silver_version: int | None = None
    size: int | None = None  # what the listing said of the object: with the key, how the next run knows it
    tag: str | None = None


def split_contract(typed: pd.DataFrame, reasons: dict[int, list[str]],
                   max_bad_share: float) -> tuple[pd.Series, bool]:
    """Each row's reason to be quarantined ("" for a good row), and whether the delivery is rejected whole.

    When the share of contract-breaking rows exceeds ``max_bad_share`` every row is quarantined.
    """
    reason = pd.Series([" | ".join(reasons.get(i, [])) for i in range(len(typed))], index=typed.index)
    bad = reason != ""
    bad_share = float(bad.mean()) if len(typed) else 0.0
    if bad_share > max_bad_share:
        return reason.where(bad, f"delivery rejected: {bad_share:.1%} bad rows > {max_bad_share:.1%} allowed"), True
    return reason, False


SILVER_SCHEMA_FIELDS = [("transaction_id", "string"), ("card_id", "string"), ("customer_id", "string"),
                        ("merchant_id", "string"), ("merchant_category", "string"), ("amount", "float64"),
                        ("currency", "string"), ("timestamp", "timestamp_us"), ("channel", "string"),
                        ("country", "string"), ("is_fraud", "int64"), ("_source_key", "string"),
                        ("_source_sha256", "string"), ("_source_row", "int64"), ("date", "string")]


def _arrow_schema(fields):
    import pyarrow as pa

    types = {"string": pa.string(), "float64": pa.float64(), "int64": pa.int64(), "timestamp_us": pa.timestamp("us")}
    return pa.schema([(name, types[t]) for name, t in fields])


def silver_rows(good: pd.DataFrame):
    """Good rows as the silver table's Arrow rows (partition ``date`` from the timestamp)."""
    import pyarrow as pa

    schema = _arrow_schema(SILVER_SCHEMA_FIELDS)
    frame = good.assign(date=good["timestamp"].dt.strftime("%Y-%m-%d"), is_fraud=good["is_fraud"].astype("int64"),
                        timestamp=good["timestamp"].astype("datetime64[us]"),  # Spark reads micros, not nanos
                        _source_row=good["_source_row"].astype("int64"))
    frame = frame.sort_values(["timestamp", "transaction_id"])
    return pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)


def quarantine_rows(raw: pd.DataFrame, reasons: pd.Series, run_id: str, delivery_date: str):
    """Rejected rows exactly as delivered (strings), with their reasons, as the quarantine table's rows."""
    import pyarrow as pa

    from jobs.generate import RAW_COLUMNS

    fields = [(c, "string") for c in RAW_COLUMNS] + [("_reason", "string"), ("_source_key", "string"),
                                                      ("_source_sha256", "string"), ("_source_row", "int64"),
                                                      ("run_id", "string"), ("delivery_date", "string")]
    schema = _arrow_schema(fields)
    frame = raw.loc[reasons.index, RAW_COLUMNS].astype(object).where(raw.loc[reasons.index, RAW_COLUMNS].notna(), None)
    frame = frame.assign(_reason=reasons.to_numpy(), _source_key=raw.loc[reasons.index, "_source_key"],
                         _source_sha256=raw.loc[reasons.index, "_source_sha256"],
                         _source_row=raw.loc[reasons.index, "_source_row"].astype("int64"),
                         run_id=run_id, delivery_date=delivery_date)
    return pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)


def landed_by(lake: lk.Lake, key: str, digest: str, dates: set[str]) -> set[str]:
    """Transaction ids in silver that this object (key + content) put there, in any run."""
    from jobs import tables

    if not dates:
        return set()
    found = tables.read(lake, layout.SILVER_TRANSACTIONS, dates=dates, columns=["transaction_id"],
                        filters=[("_source_sha256", "=", digest), ("_source_key", "=", key)])
    return set(found["transaction_id"])


def validate_object(lake: lk.Lake, obj: dict, raw: pd.DataFrame, contract: Contract, parameters: dict,
                    max_bad_share: float, run_id: str) -> tuple[ObjectOutcome, set[str]]:
    """Validate one staged object and commit its rows: silver (MERGE), then quarantine, then its ledger entry.

    Crash-safe at every write: the silver MERGE carries the object's application transaction id
    (a retry skips it), and which rows count as silver is read back from silver (rows this object
    put there), so a retry after any crash reaches exactly the state of a clean run. Rows whose id
    another object put in silver are quarantined as repeated deliveries: a row is in silver or in
    quarantine, never both, never neither.
    """
    import time

    from jobs import tables
    from jobs.ingest import record_in_ledger

    started = time.perf_counter()
    key, digest = obj["key"], obj["sha256"]
    ident = layout.object_id(key, digest)
    out = ObjectOutcome(key, digest, len(raw), size=obj.get("size"), tag=obj.get("tag"))
    typed = to_typed(raw, obj.get("delivery_date"))
    reasons, _ = contract.failures(typed, run_name=key.rsplit("/", 1)[-1], parameters=parameters)
    reason, rejected = split_contract(typed, reasons, max_bad_share)
    good = typed[reason == ""]
    dates: set[str] = set()
    if not rejected and not good.empty:
        rows = silver_rows(good)
        dates = set(rows.column("date").to_pylist())
        merged = tables.merge_new_rows(lake, layout.SILVER_TRANSACTIONS, rows, keys=["transaction_id", "date"],
                                       app_id=f"silver-{ident}", metadata={"run_id": run_id, "object": key,
                                                                           "sha256": digest})
        out.silver_version = merged["version"]
        if merged["skipped"]:
            log.info("%s: its rows were already merged into silver (a retry): not merged again", lake.uri_of(key))
    landed = landed_by(lake, key, digest, dates)
    repeated = (reason == "") & ~typed["transaction_id"].isin(landed)
    if not rejected:
        reason = reason.where(~repeated, DUPLICATE_IN_SILVER)
    quarantined = reason[reason != ""]
    if not quarantined.empty:
        tables.merge_new_rows(lake, layout.QUARANTINE_ROWS,
                              quarantine_rows(raw, quarantined, run_id, obj.get("delivery_date") or ""),
                              keys=["_source_sha256", "_source_key", "_source_row"], app_id=f"quarantine-{ident}",
                              metadata={"run_id": run_id, "object": key, "sha256": digest})
    out.rows_silver, out.rows_quarantined = len(landed), len(quarantined)
    out.broken_rules = _count_rules(quarantined) if not quarantined.empty else {}
    extra = obj.get("extra_columns") or []
    if rejected:
        out.status = "rejected_rows"
        out.detail = f"{len(reasons)} of {len(typed)} rows break the contract"
    if extra:
        out.detail = "; ".join(filter(None, [out.detail, f"extra columns ignored: {', '.join(extra)}"]))
    record_in_ledger(lake, [_ledger_entry(out, run_id)])
    seconds = time.perf_counter() - started
    log.info("%s: %d rows -> %d silver, %d quarantined%s (%.1f s, %.0f rows/s)", lake.uri_of(key), out.rows_delivered,
             out.rows_silver, out.rows_quarantined, " (delivery rejected)" if rejected else "", seconds,
             out.rows_delivered / max(seconds, 1e-9))
    return out, dates if landed else set()  # the dates that received rows


def _ledger_entry(out: ObjectOutcome, run_id: str) -> dict:
    return {**out.__dict__, "run_id": run_id, "ingested_at": datetime.now(UTC).isoformat(timespec="seconds")}


def validate_batch(lake: lk.Lake, run_id: str, expectations_dir: Path, max_bad_share: float,
                   parameters: dict | None = None, fail_on_rejection: bool = True) -> dict:
    """Validate the bronze batch of ``run_id``: silver, quarantine, ledger, report, Data Docs.

    With ``fail_on_rejection`` a rejected object raises :class:`DataRejected` (exit code 3) after
    everything is recorded; without it the result lists the rejections (``rejected``), so the
    dates that did land can flow on before the pipeline stops.
    """
    from jobs.ingest import record_in_ledger

    if parameters is None:
        from jobs.settings import get_settings

        s = get_settings()
        parameters = contract_parameters(s.max_delivery_lag_days, s.clock_skew_minutes)
    batch_key = layout.bronze_batch(run_id)
    manifest = lake.read_json(lake.partition_file(batch_key, BATCH_MANIFEST))
    docs_dir = Path(tempfile.mkdtemp(prefix="data-docs-"))
    contract = Contract(load_suite_json(expectations_dir), docs_dir=docs_dir)
    outcomes: list[ObjectOutcome] = []
    touched: set[str] = set()
    for n, obj in enumerate(manifest["objects"], start=1):
        log.info("object %d of %d: %s", n, len(manifest["objects"]), lake.uri_of(obj["key"]))
        if obj["status"] == "rejected_file":
            out = ObjectOutcome(obj["key"], obj["sha256"], obj.get("rows_delivered") or 0, status="rejected_file",
                                size=obj.get("size"), tag=obj.get("tag"))
            out.rows_quarantined = out.rows_delivered
            out.broken_rules = {obj["rule"]: out.rows_delivered}
            out.detail = f"{obj['detail']} (file kept at {obj['quarantine']})"
            record_in_ledger(lake, [_ledger_entry(out, run_id)])
            outcomes.append(out)
            continue
        raw = lake.read_parquet(lake.partition_file(batch_key, obj["bronze_part"]))
        out, dates = validate_object(lake, obj, raw, contract, parameters, max_bad_share, run_id)
        outcomes.append(out)
        touched.update(dates)

    report = {
        "run_id": run_id,
        "objects": [o.__dict__ for o in outcomes],
        "rows_delivered": sum(o.rows_delivered for o in outcomes),
        "rows_silver": sum(o.rows_silver for o in outcomes),
        "rows_quarantined": sum(o.rows_quarantined for o in outcomes),
        "silver_dates": sorted(touched),
    }
    docs_key = layout.data_docs(run_id)
    if any(docs_dir.iterdir()):
        lake.publish_folder(docs_dir, docs_key)
        report["data_docs"] = lake.uri_of(lake.partition_file(docs_key, "index.html"))
    shutil.rmtree(docs_dir, ignore_errors=True)
    lake.write_json(layout.validation_report(run_id), report)
    rejected = [o for o in outcomes if o.status != "ingested"]
    message = ""
    if rejected:
        lines = [
            f"{lake.uri_of(o.key)}: {o.status}, {o.rows_delivered} rows delivered, "
            f"{o.rows_quarantined} quarantined; broken rules: "
            + ", ".join(f"{rule} ({n} rows)" for rule, n in o.broken_rules.items())
            + (f"; {o.detail}" if o.detail else "")
            for o in rejected
        ]
        landed = (f"{len(touched)} date(s) of good rows landed in silver and flow on: {', '.join(sorted(touched))}. "
                  if touched else "")
        message = (f"{len(rejected)} of {len(outcomes)} delivered object(s) rejected; {landed}The pipeline stops "
                   f"for the rejected data. Raw files are untouched; quarantine: {lake.uri_of(layout.QUARANTINE)}\n  "
                   + "\n  ".join(lines))
        if fail_on_rejection:
            raise DataRejected(message)
        log.error("%s", message)
    return {**{k: v for k, v in report.items() if k != "objects"},
            "rejected": [{"key": o.key, "status": o.status, "rows": o.rows_delivered} for o in rejected],
            "rejection_message": message,
            "report": lake.uri_of(layout.validation_report(run_id)),
            "silver": lake.uri_of(layout.SILVER_TRANSACTIONS)}


def _count_rules(reasons: pd.Series) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in reasons:
        for rule in r.split(" | "):
            counts[rule] = counts.get(rule, 0) + 1
    return counts
