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
from jobs.ingest import BATCH_MANIFEST
from jobs.result import DataRejected, JobError

log = logging.getLogger(__name__)

SUITE_FILE = "raw_transactions.json"
ROW_ID = "_row_id"
DUPLICATE_IN_SILVER = "transaction id already in silver (repeated delivery)"


def load_suite_json(expectations_dir: Path, name: str = SUITE_FILE) -> dict:
    """The reviewed suite JSON from ``expectations/``."""
    return json.loads((expectations_dir / name).read_text())


def to_typed(raw: pd.DataFrame) -> pd.DataFrame:
    """Cast as-delivered strings to contract types; unparseable values become null."""
    typed = raw.copy()
    typed["amount"] = pd.to_numeric(raw["amount"], errors="coerce")
    ts = pd.to_datetime(raw["timestamp"], utc=True, errors="coerce", format="ISO8601")
    typed["timestamp"] = ts.dt.tz_localize(None)
    typed["is_fraud"] = pd.to_numeric(raw["is_fraud"], errors="coerce").astype("float64")
    return typed


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

    def failures(self, frame: pd.DataFrame, run_name: str = "batch") -> tuple[dict[int, list[str]], list[dict]]:
        """Map each failing row to the rules it broke; returns ``(reasons_by_row, expectation_summaries)``.

        Table-level expectations that fail (e.g. the column set) mark every row.
        """
        from great_expectations.core.run_identifier import RunIdentifier

        frame = frame.copy()
        frame[ROW_ID] = range(len(frame))
        outcome = self.checkpoint.run(batch_parameters={"dataframe": frame}, run_id=RunIdentifier(run_name=run_name))
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
    """What became of one delivered object."""

    key: str
    sha256: str
    rows_delivered: int
    rows_silver: int = 0
    rows_quarantined: int = 0
    status: str = "ingested"
    broken_rules: dict[str, int] = field(default_factory=dict)
    detail: str = ""


def split_object(typed: pd.DataFrame, reasons: dict[int, list[str]], silver_ids: set[str],
                 max_bad_share: float) -> tuple[pd.DataFrame, pd.DataFrame, bool]:
    """Split one object's rows into (good, quarantined-with-reason, rejected_whole).

    Rows whose id is already in silver are quarantined as repeated deliveries. When the share
    of contract-breaking rows exceeds ``max_bad_share`` all rows are quarantined.
    """
    reason = pd.Series([" | ".join(reasons.get(i, [])) for i in range(len(typed))], index=typed.index)
    bad = reason != ""
    bad_share = float(bad.mean()) if len(typed) else 0.0
    if bad_share > max_bad_share:
        whole = reason.where(bad, f"delivery rejected: {bad_share:.1%} bad rows > {max_bad_share:.1%} allowed")
        return typed.iloc[0:0], typed.assign(_reason=whole), True
    dup = ~bad & typed["transaction_id"].isin(silver_ids)
    reason = reason.where(~dup, DUPLICATE_IN_SILVER)
    bad = bad | dup
    return typed[~bad], typed[bad].assign(_reason=reason[bad]), False


def _silver_ids(lake: lk.Lake, dates: set[str]) -> set[str]:
    ids: set[str] = set()
    for d in dates:
        key = lk.date_partition(lk.SILVER_TRANSACTIONS, d)
        if lake.exists(key):
            ids.update(lake.read_parquet(key, columns=["transaction_id"])["transaction_id"])
    return ids


def publish_silver(lake: lk.Lake, good: pd.DataFrame) -> list[str]:
    """Merge good rows into their date partitions (existing rows win); atomic per partition."""
    if good.empty:
        return []
    good = good.assign(date=good["timestamp"].dt.strftime("%Y-%m-%d"), is_fraud=good["is_fraud"].astype("int64"))
    touched = []
    for date, rows in good.groupby("date"):
        key = lk.date_partition(lk.SILVER_TRANSACTIONS, date)
        rows = rows.drop(columns=["date"])
        if lake.exists(key):
            rows = pd.concat([lake.read_parquet(key), rows], ignore_index=True)
        rows = rows.drop_duplicates("transaction_id", keep="first").sort_values(["timestamp", "transaction_id"])
        rows["timestamp"] = rows["timestamp"].astype("datetime64[us]")  # Spark reads micros, not nanos
        with lake.publish(key) as folder:
            rows.to_parquet(folder / "part-00000.parquet", index=False)
        touched.append(date)
    return sorted(touched)


def validate_batch(lake: lk.Lake, run_id: str, expectations_dir: Path, max_bad_share: float) -> dict:
    """Validate the bronze batch of ``run_id``; publish silver, quarantine, ledger, report."""
    batch_key = f"{lk.BRONZE_BATCHES}/{run_id}"
    manifest = lake.read_json(lake.partition_file(batch_key, BATCH_MANIFEST))
    docs_dir = Path(tempfile.mkdtemp(prefix="data-docs-"))
    contract = Contract(load_suite_json(expectations_dir), docs_dir=docs_dir)
    outcomes: list[ObjectOutcome] = []
    touched: set[str] = set()
    for obj in manifest["objects"]:
        out = ObjectOutcome(obj["key"], obj["sha256"], obj.get("rows_delivered") or 0)
        if obj["status"] == "rejected_file":
            out.status, out.rows_quarantined = "rejected_file", out.rows_delivered
            out.broken_rules = {obj["rule"]: out.rows_delivered}
            out.detail = f"{obj['detail']} (file kept at {obj['quarantine']})"
            outcomes.append(out)
            continue
        raw = lake.read_parquet(lake.partition_file(batch_key, obj["bronze_part"]))
        typed = to_typed(raw)
        reasons, _ = contract.failures(typed, run_name=obj["key"].rsplit("/", 1)[-1])
        dates = set(typed["timestamp"].dropna().dt.strftime("%Y-%m-%d"))
        good, quarantined, rejected = split_object(typed, reasons, _silver_ids(lake, dates), max_bad_share)
        if not quarantined.empty:
            qkey = f"{lk.QUARANTINE}/rows/{run_id}/{obj['bronze_part']}"
            q = raw.loc[quarantined.index].assign(_reason=quarantined["_reason"])
            lake.write_bytes(qkey, q.to_parquet(index=False))
        touched.update(publish_silver(lake, good.drop(columns=["_source_sha256"])))
        out.rows_silver, out.rows_quarantined = len(good), len(quarantined)
        out.broken_rules = _count_rules(quarantined["_reason"]) if not quarantined.empty else {}
        if rejected:
            out.status = "rejected_rows"
            out.detail = f"{sum(1 for r in reasons)} of {len(typed)} rows break the contract"
        outcomes.append(out)
        log.info("%s: %d rows -> %d silver, %d quarantined", lake.uri_of(obj["key"]),
                 out.rows_delivered, out.rows_silver, out.rows_quarantined)

    now = datetime.now(UTC).isoformat(timespec="seconds")
    for out in outcomes:
        lake.append_line(lk.LEDGER, json.dumps({**out.__dict__, "run_id": run_id, "ingested_at": now}))
    report = {
        "run_id": run_id,
        "objects": [o.__dict__ for o in outcomes],
        "rows_delivered": sum(o.rows_delivered for o in outcomes),
        "rows_silver": sum(o.rows_silver for o in outcomes),
        "rows_quarantined": sum(o.rows_quarantined for o in outcomes),
        "silver_dates": sorted(touched),
    }
    docs_key = f"{lk.REPORTS}/data_docs/{run_id}"
    if any(docs_dir.iterdir()):
        lake.publish_folder(docs_dir, docs_key)
        report["data_docs"] = lake.uri_of(lake.partition_file(docs_key, "index.html"))
    shutil.rmtree(docs_dir, ignore_errors=True)
    lake.write_json(f"{lk.REPORTS}/validation/{run_id}.json", report)
    rejected = [o for o in outcomes if o.status != "ingested"]
    if rejected:
        lines = [
            f"{lake.uri_of(o.key)}: {o.status}, {o.rows_delivered} rows delivered, "
            f"{o.rows_quarantined} quarantined; broken rules: "
            + ", ".join(f"{rule} ({n} rows)" for rule, n in o.broken_rules.items())
            + (f"; {o.detail}" if o.detail else "")
            for o in rejected
        ]
        raise DataRejected(
            f"{len(rejected)} of {len(outcomes)} delivered object(s) rejected; the pipeline stops "
            f"before features. Raw files are untouched; quarantine: {lake.uri_of(lk.QUARANTINE)}\n  "
            + "\n  ".join(lines)
        )
    return {**{k: v for k, v in report.items() if k != "objects"},
            "report": lake.uri_of(f"{lk.REPORTS}/validation/{run_id}.json"),
            "silver": lake.uri_of(lk.SILVER_TRANSACTIONS)}


def _count_rules(reasons: pd.Series) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in reasons:
        for rule in r.split(" | "):
            counts[rule] = counts.get(rule, 0) + 1
    return counts
