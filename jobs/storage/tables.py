"""The lake's Delta Lake tables (delta-rs, no JVM), on ``file://`` and ``s3://`` through one code path.

- silver is appended to by MERGE on the key (insert when not matched: rows already there win),
  with an application transaction id per delivered object, so a retried write is a no-op;
- gold and predictions replace the dates they rebuild with one predicate overwrite: all dates
  of one build in one commit, so no reader ever sees a half-rebuilt range;
- every write is a new table version (time travel, lineage); old files stay until a vacuum;
- a concurrent writer makes a commit fail (optimistic concurrency); the write is redone on the
  fresh table (MERGE re-reads it, so nothing is duplicated).

On S3, commits are conditional PUTs (``If-None-Match``), so no lock service is needed.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterable

from jobs.devkit import faults
from jobs.shared import layout
from jobs.shared.layout import TABLES
from jobs.storage.lake import Lake, LakeError, StorageUnavailable, storage_failure

log = logging.getLogger(__name__)

WRITE_BATCH_ROWS = 131_072  # rows per record batch when a commit reads a dataset
COMMIT_ATTEMPTS = 12  # optimistic-concurrency retries of one write before the job fails (retryable)


def _partition_column(name: str) -> str | None:
    return TABLES[name]


def _storage_error(lake: Lake, name: str, action: str, exc: Exception) -> StorageUnavailable:
    """The error a job raises: the table, the store's answer (HTTP status, S3 code) and what to do."""
    answered, advice = storage_failure(str(exc))
    first = str(exc).splitlines()[0] if str(exc) else ""
    return StorageUnavailable(f"{action} of Delta table {lake.uri_of(name)} failed: "
                              f"{answered + ': ' if answered else ''}{type(exc).__name__}: {first}; {advice}")


def open_table(lake: Lake, name: str, version: int | None = None):
    """The table (at ``version``, else the latest), or None when it does not exist yet.

    "Does not exist" is decided by listing its ``_delta_log`` through the lake (whose errors
    raise); a storage error while delta-rs loads the table is never taken for an absent table.
    """
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError, TableNotFoundError

    uri, options = lake.table_location(name)
    try:
        return DeltaTable(uri, version=version, storage_options=options)
    except TableNotFoundError as exc:
        if lake.has_table(name):
            raise _storage_error(lake, name, "loading", exc) from exc
        if version is not None:
            raise LakeError(f"Delta table {lake.uri_of(name)} does not exist (asked for version {version})") from exc
        return None
    except (DeltaError, OSError) as exc:
        if version is not None and "version" in str(exc).lower() and "not" in str(exc).lower():
            raise LakeError(f"{lake.uri_of(name)} has no version {version} ({exc})") from exc
        raise _storage_error(lake, name, "loading", exc) from exc


def version(lake: Lake, name: str) -> int | None:
    """The table's latest version, or None when it does not exist."""
    table = open_table(lake, name)
    return None if table is None else table.version()


def _partition_filter(name: str, dates: Iterable[str] | None):
    column = _partition_column(name)
    if dates is None:
        return None
    if column is None:
        raise LakeError(f"{name} is not partitioned by date")
    return [(column, "in", sorted(set(dates)))]


def dataset(lake: Lake, table, name: str, dates: Iterable[str] | None = None):
    """The table's Parquet files (only the ``dates`` partitions, pruned from the log) as a pyarrow dataset.

    The files are read through the lake's native Arrow filesystem (``Lake.table_filesystem``), not
    delta-rs's default, a filesystem written in Python: Arrow's I/O threads calling into Python
    aborted the process as the interpreter finalized ("terminate called without an active
    exception", exit 134) after the step had succeeded, about one run in twenty on a loaded
    machine (apache/arrow#34314). ``tests/jobs/steps/test_ingest_validate.py`` pins this.
    """
    return table.to_pyarrow_dataset(file_pruning_predicate=_partition_filter(name, dates),
                                    filesystem=lake.table_filesystem(name))


# Scanner options of every Delta read: no scanner threads.
SCAN = {"use_threads": False}


def read(lake: Lake, name: str, dates: Iterable[str] | None = None, columns: list[str] | None = None,
         version: int | None = None, filters: list | None = None):
    """Rows of the table (only the ``dates`` partitions when given) as a pandas DataFrame.

    An absent table reads as an empty frame; a storage error raises.
    """
    import pandas as pd
    from deltalake.exceptions import DeltaError

    dates = list(dates) if dates is not None else None
    if dates == []:
        return pd.DataFrame(columns=columns)
    table = open_table(lake, name, version)
    if table is None:
        return pd.DataFrame(columns=columns)
    # Partitions are pruned from the log; other conditions are applied to the rows read, because
    # files written by different delta-rs operations may type strings as string or string_view,
    # which pyarrow's dataset filters cannot compare.
    filters = list(filters or [])
    wanted = None if columns is None else list(dict.fromkeys([*columns, *(f[0] for f in filters)]))
    try:
        frame = dataset(lake, table, name, dates).to_table(columns=wanted, **SCAN).to_pandas()
    except (DeltaError, OSError) as exc:
        raise _storage_error(lake, name, "reading", exc) from exc
    for column, op, value in filters:
        if op == "=":
            frame = frame[frame[column] == value]
        elif op == "in":
            frame = frame[frame[column].isin(list(value))]
        else:
            raise ValueError(f"unsupported filter operator {op!r}")
    return frame[columns].reset_index(drop=True) if columns is not None else frame.reset_index(drop=True)


def select(lake: Lake, name: str, columns: list[str], dates: Iterable[str] | None = None,
           equals: dict[str, str] | None = None):
    """``columns`` of the rows whose columns equal ``equals`` (in the ``dates`` partitions), as a pyarrow Table.

    Scanned batch by batch (partitions pruned from the log, only the needed columns read, the
    conditions pushed down to the scan), so memory holds a few batches plus the result.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    from deltalake.exceptions import DeltaError

    dates = list(dates) if dates is not None else None
    table = open_table(lake, name)
    if table is None or dates == []:
        return pa.table({c: pa.array([], pa.string()) for c in columns})
    condition = None
    for column, value in (equals or {}).items():
        # string or string_view, depending on the delta-rs operation that wrote the file
        hit = pc.field(column).cast(pa.string()) == pa.scalar(value, pa.string())
        condition = hit if condition is None else condition & hit
    kept = []
    try:
        files = dataset(lake, table, name, dates)
        # The conditions are pushed down to the Parquet scan; a small read-ahead keeps memory to
        # a few batches (the default reads up to 16 ahead, gigabytes on a 10M-row partition).
        for batch in files.to_batches(columns=columns, filter=condition, batch_size=128_000, batch_readahead=1,
                                        fragment_readahead=1, **SCAN):
            if batch.num_rows:
                kept.append(pa.Table.from_batches([batch]))
    except (DeltaError, OSError) as exc:
        raise _storage_error(lake, name, "reading", exc) from exc
    if not kept:
        return pa.table({c: pa.array([], files.schema.field(c).type) for c in columns})
    return pa.concat_tables(kept, promote_options="permissive")


def batches(lake: Lake, name: str, columns: list[str], dates: Iterable[str] | None = None,
            batch_size: int = 50_000, version: int | None = None):
    """``columns`` of the table (the ``dates`` partitions), as pyarrow record batches of at most
    ``batch_size`` rows, read one after another: memory holds a batch or two, whatever the size."""
    from deltalake.exceptions import DeltaError

    dates = list(dates) if dates is not None else None
    table = open_table(lake, name, version)
    if table is None or dates == []:
        return
    try:
        yield from dataset(lake, table, name, dates).to_batches(columns=columns, batch_size=batch_size,
                                                           batch_readahead=1, fragment_readahead=1, **SCAN)
    except (DeltaError, OSError) as exc:
        raise _storage_error(lake, name, "reading", exc) from exc


def count(lake: Lake, name: str, dates: Iterable[str] | None = None) -> int:
    """Rows in the table (or in the ``dates`` partitions), from the log's file statistics when present."""
    table = open_table(lake, name)
    if table is None:
        return 0
    return dataset(lake, table, name, dates).count_rows(**SCAN)


def partitions(lake: Lake, name: str, version: int | None = None) -> list[str]:
    """Values of the partition column present in one version (the latest by default), sorted."""
    table = open_table(lake, name, version)
    if table is None:
        return []
    column = _partition_column(name)
    return sorted({p[column] for p in table.partitions()})


def date_counts(lake: Lake, name: str, dates: Iterable[str], version: int | None = None) -> dict[str, int]:
    """Rows per date of the ``dates`` present in one version (the latest by default), from the log's
    file statistics (no data read; counted by a scan where a file has none)."""
    import pyarrow as pa

    table = open_table(lake, name, version)
    if table is None:
        return {}
    column = _partition_column(name)
    wanted = set(dates)
    actions = pa.table(table.get_add_actions(flatten=True)).to_pydict()
    counts: dict[str, int] = {}
    for value, rows in zip(actions[f"partition.{column}"], actions.get("num_records") or [None] * len(actions["path"]),
                           strict=True):
        if value not in wanted:
            continue
        if rows is None:  # a file written without statistics
            return {d: n for d in sorted(wanted) if (n := dataset(lake, table, name, [d]).count_rows(**SCAN))}
        counts[value] = counts.get(value, 0) + int(rows)
    return {d: counts[d] for d in sorted(counts) if counts[d]}


def files(lake: Lake, name: str, dates: Iterable[str], version: int | None = None) -> list[str]:
    """URIs of the Parquet files that make up the ``dates`` of one table version (a snapshot).

    What an engine without the Delta jars (Spark here) reads: exactly that version's rows.
    """
    table = open_table(lake, name, version)
    if table is None:
        return []
    column = _partition_column(name)
    wanted = set(dates)
    import pyarrow as pa

    actions = pa.table(table.get_add_actions(flatten=True)).to_pydict()
    paths = actions["path"]
    values = actions[f"partition.{column}"]
    root = table.table_uri.rstrip("/")
    out = [f"{root}/{p}" for p, v in zip(paths, values, strict=True) if v in wanted]
    return [u.removeprefix("file://") if u.startswith("file://") else u for u in sorted(out)]


def snapshot_of(lake: Lake, name: str, dates: Iterable[str], version: int | None = None) -> list[str]:
    """The ``dates``' files of one version (the latest by default), relative to the table.

    Delta never rewrites a file in place, so an equal list means equal rows (what
    ``jobs.storage.unchanged`` compares); a compaction or rebuild gives a new list. A step records the
    version it read, never a later one: rows committed while it ran are not in its record.
    """
    uris = files(lake, name, dates, version)
    return [u.split(f"/{name}/", 1)[-1] for u in uris]


def _commit_properties(app_id: str | None, metadata: dict | None):
    from deltalake import CommitProperties, Transaction

    return CommitProperties(
        custom_metadata={k: str(v) for k, v in (metadata or {}).items()},
        app_transactions=[Transaction(app_id=app_id, version=1)] if app_id else None,
    )


def _ensure(lake: Lake, name: str, schema):
    """The table, created empty with ``schema`` if it does not exist yet (safe when two create it)."""
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError

    table = open_table(lake, name)
    if table is not None:
        return table
    uri, options = lake.table_location(name)
    column = _partition_column(name)
    try:
        DeltaTable.create(uri, schema=schema, partition_by=[column] if column else None, mode="ignore",
                          storage_options=options, name=name.replace("/", "_"))
        faults.wrote(f"create table {name}")
    except (DeltaError, OSError) as exc:  # another writer created it first: use theirs
        log.info("creating %s raced with another writer (%s); using the existing table", lake.uri_of(name), exc)
    table = open_table(lake, name)
    if table is None:
        raise LakeError(f"could not create Delta table {lake.uri_of(name)}")
    return table


def _backoff(attempt: int) -> None:
    time.sleep(random.uniform(0, 0.05 * 2 ** min(attempt, 6)))


# DataFusion's memory pool for one MERGE before it spills to local disk. Measured: it does not
# bound the MERGE's peak (about 0.5 GiB at 1M source rows), see docs/performance.md.
MERGE_MEMORY_BYTES = 256 << 20


def merge_new_rows(lake: Lake, name: str, data, keys: list[str], app_id: str | None = None,
                   metadata: dict | None = None, partitions: Iterable[str] | None = None,
                   evolve_schema: bool = False) -> dict:
    """Insert the rows of ``data`` whose ``keys`` are not in the table yet.

    ``data`` is a pyarrow Table, or a callable that opens a fresh ``RecordBatchReader`` (a source
    streamed from a file, replayed when a commit race forces a retry; memory stays bounded).
    ``partitions``: the partition values the rows fall in (read from a Table when not given), to
    prune the target. Rows already in the table win (never overwritten). With ``app_id``, a write
    already committed under that id is skipped (a retried task is a no-op). ``evolve_schema``
    adds the source's new nullable columns to the table. Returns the merge metrics, plus
    ``skipped`` and the table ``version`` that holds the rows.
    """
    from deltalake.exceptions import CommitFailedError, DeltaError

    column = _partition_column(name)
    opener = data if callable(data) else (lambda: data)
    for attempt in range(COMMIT_ATTEMPTS):
        source = opener()
        table = _ensure(lake, name, source.schema)
        if app_id and table.transaction_version(app_id) is not None:
            return {"skipped": True, "version": table.version(), "num_target_rows_inserted": 0}
        predicate = " AND ".join(f"t.{k} = s.{k}" for k in keys)
        values = partitions
        if values is None and column and hasattr(source, "num_rows") and column in source.column_names \
                and source.num_rows:
            values = source.column(column).to_pylist()
        if column and values:
            values = sorted(set(values))  # prune the target to these partitions
            predicate += f" AND t.{column} IN ({', '.join(_sql_literal(v) for v in values)})"
        try:
            metrics = (
                table.merge(source, predicate, source_alias="s", target_alias="t", merge_schema=evolve_schema,
                            max_spill_size=MERGE_MEMORY_BYTES, commit_properties=_commit_properties(app_id, metadata))
                .when_not_matched_insert_all()
                .execute()
            )
        except CommitFailedError as exc:
            log.info("merge into %s conflicted with a concurrent commit (%s); redoing it on the new version",
                     lake.uri_of(name), str(exc).splitlines()[0])
            _backoff(attempt)
            continue
        except (DeltaError, OSError) as exc:
            raise _storage_error(lake, name, "merging into", exc) from exc
        faults.wrote(f"merge {name}")
        return {**metrics, "skipped": False, "version": table.version()}
    raise StorageUnavailable(f"merge into {lake.uri_of(name)}: {COMMIT_ATTEMPTS} concurrent-commit conflicts "
                             "in a row; retry the task")


def replace_partitions(lake: Lake, name: str, data, dates: Iterable[str], metadata: dict | None = None,
                       evolve_schema: bool = False) -> int:
    """Replace the ``dates`` partitions with ``data`` in one commit.

    ``data``: a pyarrow Table, a pyarrow Dataset (read in record batches, and read again when a
    concurrent commit conflicts: a build's staged output) or a RecordBatchReader (read once: a
    conflict fails the task, which retries). Dates in ``dates`` without rows in ``data`` end up
    empty. Returns the new table version. ``evolve_schema``: new columns of ``data`` are added to
    the table (older rows read them as null).
    """
    from deltalake import write_deltalake
    from deltalake.exceptions import CommitFailedError, DeltaError

    column = _partition_column(name)
    dates = sorted(set(dates))
    if not dates:
        raise LakeError(f"replace_partitions on {lake.uri_of(name)} needs at least one date")
    predicate = f"{column} IN ({', '.join(_sql_literal(d) for d in dates)})"
    uri, options = lake.table_location(name)
    for attempt in range(COMMIT_ATTEMPTS):
        _ensure(lake, name, data.schema)
        rows = data.scanner(batch_size=WRITE_BATCH_ROWS).to_reader() if hasattr(data, "scanner") else data
        try:
            write_deltalake(uri, rows, mode="overwrite", predicate=predicate, partition_by=[column],
                            storage_options=options, commit_properties=_commit_properties(None, metadata),
                            schema_mode="merge" if evolve_schema else None)
        except CommitFailedError as exc:
            if not hasattr(data, "num_rows") and not hasattr(data, "scanner"):  # a stream cannot be replayed
                raise StorageUnavailable(f"replacing {dates} of {lake.uri_of(name)} conflicted with a concurrent "
                                         f"commit ({exc}); retry the task") from exc
            _backoff(attempt)
            continue
        except (DeltaError, OSError) as exc:
            raise _storage_error(lake, name, "overwriting", exc) from exc
        faults.wrote(f"overwrite {name}")
        return open_table(lake, name).version()
    raise StorageUnavailable(f"replacing {dates} of {lake.uri_of(name)}: {COMMIT_ATTEMPTS} conflicts in a row")


def append_rows(lake: Lake, name: str, data, app_id: str) -> dict:
    """Append ``data`` (a pyarrow Table) in one commit under ``app_id``: a retried append whose
    commit already happened (the answer was lost, the process died after it) adds nothing."""
    from deltalake import write_deltalake
    from deltalake.exceptions import CommitFailedError, DeltaError

    column = _partition_column(name)
    uri, options = lake.table_location(name)
    for attempt in range(COMMIT_ATTEMPTS):
        table = _ensure(lake, name, data.schema)
        if table.transaction_version(app_id) is not None:
            return {"skipped": True, "version": table.version(), "rows": 0}
        try:
            write_deltalake(uri, data, mode="append", partition_by=[column] if column else None,
                            storage_options=options, commit_properties=_commit_properties(app_id, None))
        except CommitFailedError:
            _backoff(attempt)
            continue
        except (DeltaError, OSError) as exc:
            raise _storage_error(lake, name, "appending to", exc) from exc
        faults.wrote(f"append {name}")
        return {"skipped": False, "version": open_table(lake, name).version(), "rows": data.num_rows}
    raise StorageUnavailable(f"append to {lake.uri_of(name)}: {COMMIT_ATTEMPTS} conflicts in a row")


def history(lake: Lake, name: str, limit: int | None = None) -> list[dict]:
    """Commits of the table, newest first (operation, metrics, the metadata the writer added)."""
    table = open_table(lake, name)
    return [] if table is None else table.history(limit)


def maintain(lake: Lake, name: str, retention_hours: int, dry_run: bool = False) -> dict:
    """Compact small files, checkpoint the log, and vacuum files unreferenced for ``retention_hours``.

    Readers of any version younger than the retention never lose a file: only the vacuum deletes,
    and only what no such version references.
    """
    table = open_table(lake, name)
    if table is None:
        return {"table": lake.uri_of(name), "exists": False}
    compacted = {} if dry_run else table.optimize.compact()
    if not dry_run:
        table.create_checkpoint()
    removed = table.vacuum(retention_hours=retention_hours, dry_run=dry_run, enforce_retention_duration=True)
    if not dry_run:
        faults.wrote(f"maintain {name}")
    return {"table": lake.uri_of(name), "exists": True, "version": open_table(lake, name).version(),
            "files_compacted": int(compacted.get("numFilesRemoved", 0) or 0),
            "files_vacuumed": len(removed), "dry_run": dry_run}


def _sql_literal(value) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def silver_version_of_gold(lake: Lake, gold_version: int) -> int | None:
    """The newest silver version any gold build up to ``gold_version`` read (from the commits' metadata)."""
    read = [int(c["silver_version"]) for c in history(lake, layout.GOLD_FEATURES)
            if c.get("silver_version") not in (None, "None") and int(c.get("version", -1)) <= gold_version]
    return max(read, default=None)
