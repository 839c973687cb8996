"""Validation: run the raw-transactions contract (Great Expectations) on a bronze batch.

Every delivered row ends in exactly one place: silver (valid, first time seen) or quarantine
(with the rules it broke). A delivery whose bad share exceeds the threshold is quarantined
whole, and the job fails so the pipeline stops before features and training.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from jobs.quality.contract import Contract, contract_parameters, load_suite_json, to_typed
from jobs.shared import layout, links
from jobs.shared.layout import BATCH_MANIFEST
from jobs.shared.result import DataRejected, JobError
from jobs.storage import id_index
from jobs.storage import lake as lk
from jobs.storage.raw import DEFAULT_BATCH_ROWS

log = logging.getLogger(__name__)

DUPLICATE_IN_SILVER = "transaction id already in silver (repeated delivery)"
CONFLICT_IN_SILVER = "transaction id already in silver with other values (conflicting delivery)"


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
    """Good rows as the silver table's Arrow rows (partition ``date`` from the timestamp), by time then id."""
    import pyarrow as pa
    import pyarrow.compute as pc

    schema = _arrow_schema(SILVER_SCHEMA_FIELDS)  # its last column is the partition, date
    table = pa.Table.from_pandas(good[schema.names[:-1]], preserve_index=False)
    table = table.append_column("date", pc.strftime(table.column("timestamp"), format="%Y-%m-%d"))
    # Unsafe cast: labels 0.0/1.0 to integers, nanoseconds to microseconds (Spark reads micros).
    return table.cast(schema, safe=False).sort_by([("timestamp", "ascending"), ("transaction_id", "ascending")])


def quarantine_schema():
    from jobs.shared.schemas import RAW_COLUMNS, RAW_LINE

    fields = [(c, "string") for c in RAW_COLUMNS] + [("_reason", "string"), ("_source_key", "string"),
                                                      ("_source_sha256", "string"), ("_source_row", "int64"),
                                                      ("run_id", "string"), ("delivery_date", "string"),
                                                      (RAW_LINE, "string")]
    return _arrow_schema(fields)


def quarantine_rows(raw: pd.DataFrame, reasons: pd.Series, run_id: str, delivery_date: str):
    """Rejected rows exactly as delivered (strings, and the line's text when it was malformed), with reasons.

    ``reasons`` is indexed like ``raw`` (its index says which rows); the quarantine table's rows.
    """
    import pyarrow as pa

    from jobs.shared.schemas import RAW_COLUMNS, RAW_LINE

    rows = raw.loc[reasons.index]
    n = len(rows)
    columns = {c: rows[c] for c in [*RAW_COLUMNS, "_source_key", "_source_sha256", "_source_row"]}
    columns.update(_reason=reasons, run_id=[run_id] * n, delivery_date=[delivery_date] * n,
                   **{RAW_LINE: rows[RAW_LINE] if RAW_LINE in rows.columns else [None] * n})
    schema = quarantine_schema()
    return pa.Table.from_arrays([pa.array(columns[f.name], f.type, from_pandas=True) for f in schema], schema=schema)


def landed_rows(lake: lk.Lake, key: str, digest: str, dates: set[str]):
    """``_source_row`` of every row of silver that this object (key + content) put there, in any run."""
    import numpy as np

    from jobs.storage import tables

    if not dates:
        return np.zeros(0, dtype="int64")
    found = tables.select(lake, layout.SILVER_TRANSACTIONS, ["_source_row"], dates=dates,
                          equals={"_source_sha256": digest, "_source_key": key})
    return np.sort(found.column("_source_row").to_numpy().astype("int64"))


def later_copies(bronze: Path, workdir: Path):
    """``_source_row`` of every row whose transaction id an earlier row of the same file already has.

    The first copy is kept (as the suite's uniqueness rule does within one batch); found across
    the whole file with DuckDB (spilling to ``workdir``), so duplicates in different batches are
    caught too. Null ids are not duplicates (the not-null rule reports them).
    """
    import duckdb
    import numpy as np

    con = duckdb.connect()
    try:
        con.execute(f"SET threads = 2; SET memory_limit = '512MB'; SET temp_directory = '{workdir}'; "
                    "SET preserve_insertion_order = false")
        found = con.execute(
            "SELECT _source_row FROM read_parquet(?) WHERE transaction_id IS NOT NULL "
            "QUALIFY row_number() OVER (PARTITION BY transaction_id ORDER BY _source_row) > 1",
            [str(bronze)]).fetchnumpy()["_source_row"]
    finally:
        con.close()
    return np.sort(np.asarray(found, dtype="int64"))


def _bronze_frames(pf, batch_rows: int):
    """A staged (bronze) object's rows, ``batch_rows`` at a time, as pandas frames of Arrow-backed strings."""
    from jobs.shared.schemas import BRONZE_EXTRA

    for batch in pf.iter_batches(batch_size=batch_rows):
        raw = batch.to_pandas(types_mapper=_string_types)
        for c in BRONZE_EXTRA:  # bronze staged before these columns existed
            if c not in raw.columns:
                raw[c] = pd.Series([None] * len(raw), dtype="string[pyarrow]")
        yield raw


class _Staged:
    """A local Parquet file written batch by batch, read back as a stream (a merge source)."""

    def __init__(self, path: Path, schema, rows: int = 0):
        self.path, self.schema, self.rows, self._writer = path, schema, rows, None  # rows: already in the file

    def write(self, table) -> None:
        import pyarrow.parquet as pq

        if not table.num_rows:
            return
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, self.schema)
        self._writer.write_table(table.cast(self.schema))
        self.rows += table.num_rows

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def reader(self):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(self.path, pre_buffer=False)
        return pa.RecordBatchReader.from_batches(self.schema, pf.iter_batches(batch_size=100_000))


@dataclass
class Checked:
    """What the contract run over one staged object leaves for its commits, in its work folder."""

    total: int
    workdir: str  # holds silver.parquet and quarantine.parquet (staged rows) and bad.npy (row mask)
    silver_rows: int = 0
    quarantine_rows: int = 0
    dates: list[str] = field(default_factory=list)
    rules: dict[str, int] = field(default_factory=dict)

    @property
    def bad(self):
        import numpy as np

        return np.load(Path(self.workdir) / "bad.npy")


def check_object(obj: dict, bronze: Path, contract: Contract, parameters: dict, run_id: str, workdir: Path,
                 batch_rows: int = DEFAULT_BATCH_ROWS, not_after=None) -> Checked:
    """Run the contract over one staged object, batch by batch, into local staging files; commits nothing.

    The bronze file is read in batches of ``batch_rows``; each batch runs the contract, and its
    good rows (silver's schema) and rejected rows (as delivered, with their reasons) are appended
    to ``silver.parquet`` and ``quarantine.parquet`` in ``workdir``, so memory stays bounded by
    the batch whatever the object's size. Repeated ids across batches are found over the whole
    file (:func:`later_copies`). ``bad.npy`` marks every row that broke a rule.
    """
    import time

    import numpy as np
    import pyarrow.parquet as pq

    from jobs.shared.schemas import MALFORMED

    started = time.perf_counter()
    key = obj["key"]
    delivery_date = obj.get("delivery_date") or ""
    pf = pq.ParquetFile(bronze, pre_buffer=False)  # local: pre-buffering keeps what it read
    total = pf.metadata.num_rows
    unique_rule = contract.rule_of("expect_column_values_to_be_unique", "transaction_id")
    order = contract.rule_order
    repeated_in_file = later_copies(bronze, workdir) if unique_rule else np.zeros(0, dtype="int64")
    bad = np.zeros(total, dtype=bool)
    staged_silver = _Staged(workdir / "silver.parquet", _arrow_schema(SILVER_SCHEMA_FIELDS))
    staged_quarantine = _Staged(workdir / "quarantine.parquet", quarantine_schema())
    out = Checked(total, str(workdir))
    dates: set[str] = set()
    done = 0
    name = key.rsplit("/", 1)[-1]
    for n, raw in enumerate(_bronze_frames(pf, batch_rows), start=1):
        typed = to_typed(raw, obj.get("delivery_date"), not_after)
        reasons, _ = contract.failures(typed, run_name=name if n == 1 else f"{name} batch {n}",
                                      parameters=parameters)
        source_rows = raw["_source_row"].to_numpy(dtype="int64")
        for i in np.flatnonzero(np.isin(source_rows, repeated_in_file)):
            if unique_rule not in reasons.get(int(i), []):
                reasons.setdefault(int(i), []).append(unique_rule)
        for i in np.flatnonzero(raw[MALFORMED].notna().to_numpy()):
            reasons[int(i)] = [str(raw[MALFORMED].iloc[i])]  # its values are guesses: this is the reason
        text = np.full(len(raw), "", dtype=object)
        for i, broken in reasons.items():  # in the suite's order, however a rule was found
            text[i] = " | ".join(sorted(broken, key=lambda r: order.get(r, len(order))))
        reason = pd.Series(text, index=raw.index)
        is_bad = text != ""
        bad[source_rows[is_bad]] = True
        good = typed[~is_bad]
        if not good.empty:
            rows = silver_rows(good)
            dates.update(rows.column("date").unique().to_pylist())
            staged_silver.write(rows)
        if is_bad.any():
            staged_quarantine.write(quarantine_rows(raw, reason[is_bad], run_id, delivery_date))
            _add_rules(out.rules, reason[is_bad])
        done += len(raw)
        del raw, typed, good, reason, text
        _release_memory()
        if total > batch_rows:
            seconds = time.perf_counter() - started
            log.info("%s: %d of %d rows checked (%.0f rows/s, peak memory %.2f GiB)", obj.get("uri", key), done, total,
                     done / seconds, _peak_gib())
    staged_silver.close()
    staged_quarantine.close()
    np.save(workdir / "bad.npy", bad)
    out.silver_rows, out.quarantine_rows, out.dates = staged_silver.rows, staged_quarantine.rows, sorted(dates)
    return out


def check_objects(objects: list[tuple[dict, str, str]], expectations_dir: Path, docs_dir: Path | None,
                  parameters: dict, run_id: str, batch_rows: int, not_after=None) -> list[Checked]:
    """:func:`check_object` for each ``(object, bronze path, work folder)`` with one contract (and its Data Docs).

    Runs in a child process (:func:`_in_child`), on the system allocator (as the job), so the
    pages of each batch go back to the OS between batches.
    """
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())  # already so when forked; spawned, not
    contract = Contract(load_suite_json(expectations_dir), docs_dir=docs_dir)
    checked = [check_object(obj, Path(bronze), contract, parameters, run_id, Path(workdir), batch_rows, not_after)
               for obj, bronze, workdir in objects]
    contract.render_docs()
    return checked


def _in_child(fn, *args):
    """``fn(*args)`` in a child process that exits when it is done.

    The contract run holds what the commits do not need (Great Expectations' modules and
    context, and the heap the pandas batches leave behind): run apart, all of it is handed back
    before the Delta commits, which need memory of their own. Forked where the platform forks
    safely (Linux: the child starts with the modules already imported), spawned elsewhere.
    """
    import gc
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    method = "fork" if sys.platform == "linux" else "spawn"
    # Garbage holding native thread pools (an onnxruntime session, say) is freed here, where its
    # threads live: collected in a forked child, its destructor would join threads that the child
    # does not have, and hang (seen in a test process that had scored before validating).
    gc.collect()
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context(method),
                             initializer=_die_with_parent, initargs=(os.getpid(),)) as pool:
        try:
            return pool.submit(fn, *args).result()
        except BrokenProcessPool as exc:  # killed (out of memory?): nothing was committed, a retry redoes it
            raise JobError(f"the contract check process died before it finished ({exc}; killed for memory?); "
                           "nothing was committed, a retry redoes the validation") from exc


def _die_with_parent(parent: int) -> None:
    """In the child: be killed when the job process dies (a killed task leaves no orphan working on),
    and never collect what it inherited (see :func:`_in_child`)."""
    import gc
    import signal

    gc.freeze()

    if sys.platform == "linux":
        pr_set_pdeathsig = 1
        _libc().prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the line above
        os._exit(1)


def commit_object(lake: lk.Lake, obj: dict, bronze: Path, checked: Checked, max_bad_share: float, run_id: str,
                  batch_rows: int = DEFAULT_BATCH_ROWS) -> tuple[ObjectOutcome, set[str]]:
    """Commit one checked object's rows: silver, then quarantine, then the ledger; each commit idempotent.

    1. silver: one MERGE streamed from the staging file, with the object's application
       transaction id (a retry skips it);
    2. quarantine: every row of the object that silver does not hold from this object, read back
       from silver (so a retry after any crash reaches exactly the state of a clean run); rows
       whose id another object put in silver are quarantined as repeated deliveries;
    3. the object's ledger entry.

    A row is in silver or in quarantine, never both, never neither. A delivery whose bad share
    exceeds ``max_bad_share`` goes to quarantine whole.
    """
    import time

    import pyarrow.parquet as pq

    from jobs.storage import tables
    from jobs.storage.ledger import record_in_ledger

    started = time.perf_counter()
    key, digest = obj["key"], obj["sha256"]
    ident = layout.object_id(key, digest)
    delivery_date = obj.get("delivery_date") or ""
    workdir = Path(checked.workdir)
    pf = pq.ParquetFile(bronze, pre_buffer=False)
    total, bad, rules, dates = checked.total, checked.bad, dict(checked.rules), set(checked.dates)
    out = ObjectOutcome(key, digest, total, size=obj.get("size"), tag=obj.get("tag"))
    staged_silver = _Staged(workdir / "silver.parquet", _arrow_schema(SILVER_SCHEMA_FIELDS), rows=checked.silver_rows)
    staged_quarantine = _Staged(workdir / "quarantine.parquet", quarantine_schema(), rows=checked.quarantine_rows)
    more_quarantine = _Staged(workdir / "quarantine-more.parquet", quarantine_schema())
    bad_share = float(bad.mean()) if total else 0.0
    rejected = bad_share > max_bad_share
    if rejected:  # every row to quarantine: the good ones with the delivery's reason
        why = f"delivery rejected: {bad_share:.1%} bad rows > {max_bad_share:.1%} allowed"
        _quarantine_rows_of(pf, ~bad, why, more_quarantine, rules, run_id, delivery_date, batch_rows)
        dates = set()
    claimed = None
    if not rejected and staged_silver.rows:
        claimed = _claim_and_merge(lake, staged_silver, total, key, digest, dates, workdir, run_id, out)
    landed = landed_rows(lake, key, digest, dates)
    if not rejected and len(landed) < staged_silver.rows:  # good rows whose id another row owns
        repeated = ~bad
        repeated[landed] = False
        conflicting = repeated & claimed.conflict  # claimed: good rows reached the index
        for rows, reason in ((conflicting, CONFLICT_IN_SILVER), (repeated & ~conflicting, DUPLICATE_IN_SILVER)):
            _quarantine_rows_of(pf, rows, reason, more_quarantine, rules, run_id, delivery_date, batch_rows)
    more_quarantine.close()
    quarantined = staged_quarantine.rows + more_quarantine.rows
    if quarantined:
        tables.merge_new_rows(lake, layout.QUARANTINE_ROWS, lambda: _chained(staged_quarantine, more_quarantine),
                              keys=["_source_sha256", "_source_key", "_source_row"], app_id=f"quarantine-{ident}",
                              partitions=[delivery_date], evolve_schema=True,
                              metadata={"run_id": run_id, "object": key, "sha256": digest})
    out.rows_silver, out.rows_quarantined = len(landed), quarantined
    out.broken_rules = rules
    if rejected:
        out.status = "rejected_rows"
    out.detail = _detail(obj, f"{int(bad.sum())} of {total} rows break the contract" if rejected else "")
    record_in_ledger(lake, [_ledger_entry(out, run_id)])
    seconds = time.perf_counter() - started
    log.info("%s: %d rows -> %d silver, %d quarantined%s (commits %.1f s, peak memory %.2f GiB)",
             lake.uri_of(key), out.rows_delivered, out.rows_silver, out.rows_quarantined,
             " (delivery rejected)" if rejected else "", seconds, _peak_gib())
    return out, dates if len(landed) else set()  # the dates that received rows


def _claim_and_merge(lake: lk.Lake, staged_silver: _Staged, total: int, key: str, digest: str, dates: set[str],
                     workdir: Path, run_id: str, out: ObjectOutcome):
    """Claim the object's ids in the index across every date, then MERGE the rows that own theirs into silver."""
    from jobs.storage import tables

    claimed = id_index.claim(lake, staged_silver.path, total, key, digest, workdir, run_id)
    if claimed.owned.any():
        merged = tables.merge_new_rows(lake, layout.SILVER_TRANSACTIONS, lambda: _owned(staged_silver, claimed.owned),
                                       keys=["transaction_id", "date"],
                                       app_id=f"silver-{layout.object_id(key, digest)}", partitions=dates,
                                       metadata={"run_id": run_id, "object": key, "sha256": digest})
        out.silver_version = merged["version"]
        if merged["skipped"]:
            log.info("%s: its rows were already merged into silver (a retry): not merged again", lake.uri_of(key))
    return claimed


def _detail(obj: dict, rejection: str) -> str:
    """The ledger's detail for an object: why it was rejected, extra columns ignored, malformed lines."""
    from jobs.storage.raw import named_lines

    extra, broken = obj.get("extra_columns") or [], obj.get("broken_lines") or []
    return "; ".join(filter(None, [rejection, f"extra columns ignored: {', '.join(extra)}" if extra else "",
                                   f"malformed lines quarantined: {named_lines(broken)}" if broken else ""]))


def _owned(staged: _Staged, owned):
    """A stream of the staged silver rows whose ``_source_row`` is set in the mask ``owned``."""
    import pyarrow as pa

    def batches():
        for batch in staged.reader():
            rows = batch.column("_source_row").to_numpy()
            keep = owned[rows]
            if keep.any():
                yield batch.filter(pa.array(keep))
    return pa.RecordBatchReader.from_batches(staged.schema, batches())


def _chained(*staged: _Staged):
    """One stream over the rows of several staging files (those that got rows)."""
    import itertools

    import pyarrow as pa

    parts = [s for s in staged if s.rows]
    return pa.RecordBatchReader.from_batches(parts[0].schema, itertools.chain.from_iterable(s.reader() for s in parts))


def _libc():
    import ctypes
    import ctypes.util

    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _release_memory() -> None:
    """Hand freed heap pages back to the OS between batches (glibc keeps them otherwise, so RSS creeps up)."""
    import gc

    gc.collect()
    try:
        _libc().malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        pass


def _peak_gib() -> float:
    from jobs.shared.cost import own_peak_bytes

    return own_peak_bytes() / 2**30


def _string_types(arrow_type):
    import pyarrow as pa

    return pd.StringDtype("pyarrow") if arrow_type in (pa.string(), pa.large_string()) else None


def _quarantine_rows_of(pf, wanted, reason: str, staged: _Staged, rules: dict[str, int], run_id: str,
                        delivery_date: str, batch_rows: int) -> None:
    """Stream the bronze rows whose ``_source_row`` is set in the mask ``wanted`` into quarantine, with ``reason``."""
    import numpy as np

    if not wanted.any():
        return
    for raw in _bronze_frames(pf, batch_rows):
        pick = wanted[raw["_source_row"].to_numpy(dtype="int64")]
        if np.any(pick):
            reasons = pd.Series(reason, index=raw.index[pick])
            staged.write(quarantine_rows(raw, reasons, run_id, delivery_date))
            _add_rules(rules, reasons)


def rule_name(reason: str) -> str:
    """The rule a reason names: a malformed line's reason also names its line (``malformed_json: line 7: ...``)."""
    return reason.split(":", 1)[0] if reason.startswith("malformed_") else reason


def _add_rules(counts: dict[str, int], reasons: pd.Series) -> None:
    for r, n in reasons.value_counts().items():
        for rule in str(r).split(" | "):
            counts[rule_name(rule)] = counts.get(rule_name(rule), 0) + int(n)


def _ledger_entry(out: ObjectOutcome, run_id: str) -> dict:
    return {**out.__dict__, "run_id": run_id, "ingested_at": datetime.now(UTC).isoformat(timespec="seconds")}


def _staged_objects(lake: lk.Lake, batch_key: str, manifest: dict, stack: contextlib.ExitStack,
                    scratch: Path) -> dict[int, tuple[dict, str, str]]:
    """Position in the manifest -> (object, its local bronze file, a work folder), for every staged object."""
    staged = {}
    for n, obj in enumerate(manifest["objects"], start=1):
        if obj["status"] != "rejected_file":
            part = lake.partition_file(batch_key, obj["bronze_part"])
            (path,) = stack.enter_context(lake.local_files([lake.uri_of(part)]))
            (scratch / f"object-{n}").mkdir()
            staged[n] = ({**obj, "uri": lake.uri_of(obj["key"])}, path, str(scratch / f"object-{n}"))
    return staged


def _rejected_file(lake: lk.Lake, obj: dict, run_id: str) -> ObjectOutcome:
    """An object ingestion rejected whole: every delivered row counted as quarantined, in the ledger."""
    from jobs.storage.ledger import record_in_ledger

    out = ObjectOutcome(obj["key"], obj["sha256"], obj.get("rows_delivered") or 0,
                        status="rejected_file", size=obj.get("size"), tag=obj.get("tag"))
    out.rows_quarantined = out.rows_delivered
    out.broken_rules = {obj["rule"]: out.rows_delivered}
    out.detail = f"{obj['detail']} (file kept at {obj['quarantine']})"
    record_in_ledger(lake, [_ledger_entry(out, run_id)])
    return out


def _rejection_message(lake: lk.Lake, rejected: list[ObjectOutcome], delivered: int, touched: set[str]) -> str:
    """What failed, file by file with its rules, and which dates landed anyway."""
    lines = [
        f"{lake.uri_of(o.key)}: {o.status}, {o.rows_delivered} rows delivered, "
        f"{o.rows_quarantined} quarantined; broken rules: "
        + ", ".join(f"{rule} ({n} rows)" for rule, n in o.broken_rules.items())
        + (f"; {o.detail}" if o.detail else "")
        for o in rejected
    ]
    landed = (f"{len(touched)} date(s) of good rows landed in silver and flow on: {', '.join(sorted(touched))}. "
              if touched else "")
    return (f"{len(rejected)} of {delivered} delivered object(s) rejected; {landed}The pipeline stops "
            f"for the rejected data. Raw files are untouched; quarantine: {lake.uri_of(layout.QUARANTINE)}\n  "
            + "\n  ".join(lines))


def validate_batch(lake: lk.Lake, run_id: str, expectations_dir: Path, max_bad_share: float,
                   parameters: dict | None = None, fail_on_rejection: bool = True,
                   batch_rows: int = DEFAULT_BATCH_ROWS, not_after=None) -> dict:
    """Validate the bronze batch of ``run_id``: silver, quarantine, ledger, report, Data Docs.

    With ``fail_on_rejection`` a rejected object raises :class:`DataRejected` (exit code 3) after
    everything is recorded; without it the result lists the rejections (``rejected``), so the
    dates that did land can flow on before the pipeline stops.
    """
    import pyarrow as pa


    # The system allocator hands freed pages back (Arrow's default pool keeps them): the staged
    # rows streamed into the MERGE and the rows read back from silver are freed as they go.
    pa.set_memory_pool(pa.system_memory_pool())
    if parameters is None:
        from jobs.settings import get_settings

        s = get_settings()
        parameters = contract_parameters(s.max_delivery_lag_days, s.clock_skew_minutes)
    batch_key = layout.bronze_batch(run_id)
    manifest = lake.read_json(lake.partition_file(batch_key, BATCH_MANIFEST))
    outcomes: list[ObjectOutcome] = []
    touched: set[str] = set()
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="validate-")))
        docs_dir = scratch / "data-docs"
        docs_dir.mkdir()
        staged = _staged_objects(lake, batch_key, manifest, stack, scratch)
        # First the contract, over every object, in a child process that hands its memory back;
        # then the commits, object by object, in this one.
        checked = dict(zip(staged, _in_child(check_objects, list(staged.values()), expectations_dir, docs_dir,
                                             parameters, run_id, batch_rows, not_after), strict=True)) if staged else {}
        for n, obj in enumerate(manifest["objects"], start=1):
            log.info("object %d of %d: %s", n, len(manifest["objects"]), lake.uri_of(obj["key"]))
            if obj["status"] == "rejected_file":
                outcomes.append(_rejected_file(lake, obj, run_id))
                continue
            out, dates = commit_object(lake, obj, Path(staged[n][1]), checked[n], max_bad_share, run_id, batch_rows)
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
            report["links"] = {links.DATA_DOCS: links.data_docs(run_id)}
    lake.write_json(layout.validation_report(run_id), report)
    rejected = [o for o in outcomes if o.status != "ingested"]
    message = _rejection_message(lake, rejected, len(outcomes), touched) if rejected else ""
    if rejected:
        if fail_on_rejection:
            raise DataRejected(message)
        log.error("%s", message)
    return {**{k: v for k, v in report.items() if k != "objects"},
            "rejected": [{"key": o.key, "status": o.status, "rows": o.rows_delivered} for o in rejected],
            "rejection_message": message,
            "report": lake.uri_of(layout.validation_report(run_id)),
            "silver": lake.uri_of(layout.SILVER_TRANSACTIONS)}
