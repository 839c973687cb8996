"""The raw-transactions contract: the reviewed Great Expectations suite (``expectations/``) run on
typed frames, row by row, with its results redacted before anyone publishes them.

Frames in, failures out: the validate step reads and writes; this module only decides.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from jobs.shared.result import JobError

SUITE_FILE = "raw_transactions.json"
ROW_ID = "_row_id"


def load_suite_json(expectations_dir: Path, name: str = SUITE_FILE) -> dict:
    """The reviewed suite JSON from ``expectations/``."""
    return json.loads((expectations_dir / name).read_text())


def rule_name(expectation: dict) -> str:
    """How a failure of one expectation of a suite JSON is named: its reason text (``meta.rule``), else its type."""
    return (expectation.get("meta") or {}).get("rule") or expectation["type"]


def rule_of(suite_json: dict, expectation: str, column: str) -> str | None:
    """The name (:func:`rule_name`) of the suite's ``expectation`` on ``column``, if the suite has it."""
    return next((rule_name(e) for e in suite_json["expectations"]
                 if e["type"] == expectation and e["kwargs"].get("column") == column), None)


PARTITION_OFFSET = "_hours_from_partition"  # derived: timestamp minus the start of the delivery's date=


def to_typed(raw: pd.DataFrame, delivery_date: str | None = None, not_after=None) -> pd.DataFrame:
    """Cast as-delivered strings to contract types; unparseable values become null.

    With ``delivery_date`` (the ``date=`` partition the object was delivered under), adds
    ``_hours_from_partition``: how far each timestamp lies from the start of that day, which the
    contract bounds (late deliveries of a few days are normal, decades are not, the future is not).
    With ``not_after`` (now plus the allowed clock skew), a timestamp later than that lies outside
    every delivery window, whatever its partition.
    """
    typed = raw.copy()
    typed["amount"] = pd.to_numeric(raw["amount"], errors="coerce").astype("float64")
    ts = pd.to_datetime(raw["timestamp"], utc=True, errors="coerce", format="ISO8601")
    typed["timestamp"] = ts.dt.tz_localize(None).astype("datetime64[ns]")
    typed["is_fraud"] = pd.to_numeric(raw["is_fraud"], errors="coerce").astype("float64")
    if delivery_date is not None:
        start = pd.Timestamp(delivery_date)
        typed[PARTITION_OFFSET] = (typed["timestamp"] - start) / pd.Timedelta(hours=1)
        if not_after is not None:
            typed.loc[typed["timestamp"] > pd.Timestamp(not_after), PARTITION_OFFSET] = float("inf")
    return typed


def contract_parameters(max_lag_days: int, clock_skew_minutes: int) -> dict:
    """Values of the ``$PARAMETER`` placeholders of the raw contract (configurable bounds)."""
    return {"min_hours_from_partition": -24.0 * max_lag_days,
            "max_hours_from_partition": 24.0 + clock_skew_minutes / 60.0}


class Contract:
    """A reviewed suite from ``expectations/``, run by a Great Expectations checkpoint.

    With ``docs_dir``, :meth:`render_docs` renders the Data Docs (HTML) of its runs into that folder.
    """

    def __init__(self, suite_json: dict, docs_dir: Path | None = None):
        logging.getLogger("great_expectations").setLevel(logging.WARNING)
        import great_expectations as gx

        self.suite_json = suite_json
        # Each expectation's reason text (meta.rule), in the suite's order: how reasons are listed.
        self.rule_order = {rule_name(e): i for i, e in enumerate(suite_json["expectations"])}

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
        self.docs = docs_dir is not None
        if docs_dir is not None:
            self.context.add_data_docs_site(site_name="lake", site_config={
                "class_name": "SiteBuilder",
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            })
        self.checkpoint = self.context.checkpoints.add(gx.Checkpoint(
            name=f"{suite_json['name']}_checkpoint", validation_definitions=[validation], actions=[],
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [ROW_ID]},
        ))

    def render_docs(self) -> None:
        """Render the Data Docs of every run so far (once, not per batch: each rendering costs about 0.15 s)."""
        if self.docs:
            self.context.build_data_docs(site_names=["lake"])

    def rule_of(self, expectation: str, column: str) -> str | None:
        """The reason text (``meta.rule``) of the suite's ``expectation`` on ``column``, if the suite has it."""
        return rule_of(self.suite_json, expectation, column)

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
        (key, result), = outcome.run_results.items()
        if self.docs:  # Data Docs show counts and rules, never a delivered value (card ids, amounts)
            self.context.validation_results_store.set(key, redacted(result))
        reasons: dict[int, list[str]] = {}
        summaries = []
        for r in result.results:
            cfg = r.expectation_config
            rule = rule_name({"meta": cfg.meta, "type": cfg.type})
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


# What a validation result holds of the rows themselves: never published (Data Docs are served).
VALUE_FIELDS = ("unexpected_list", "partial_unexpected_list", "partial_unexpected_counts",
                "partial_unexpected_index_list", "unexpected_index_list", "unexpected_index_query", "details",
                "unexpected_rows")


def redacted(result):
    """A copy of a suite validation result with every row value taken out: counts and shares stay."""
    import copy

    clean = copy.deepcopy(result)
    for r in clean.results:
        for name in VALUE_FIELDS:
            (r.result or {}).pop(name, None)
    return clean


def row_failures(typed: pd.DataFrame, suite_json: dict) -> tuple[dict[int, list[str]], list[dict]]:
    """Run a suite once (no Data Docs); see :meth:`Contract.failures`."""
    return Contract(suite_json).failures(typed)


def _later_copies(frame: pd.DataFrame, column: str, rows: list[int]) -> list[int]:
    """Of duplicated rows, all but the first copy (the first one is kept)."""
    sub = frame.iloc[sorted(rows)]
    return [int(i) for i in sub.loc[sub.duplicated(column, keep="first"), ROW_ID]]
