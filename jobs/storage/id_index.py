"""The transaction-id index: who owns each id across all of silver, whatever its date.

Silver is partitioned by date, so a MERGE on ``(transaction_id, date)`` cannot see an id that an
earlier delivery put under another date (a timestamp moved across midnight, yesterday's rows
re-sent in today's file). The index is a narrow Delta table, partitioned by a hash bucket of the
id, with one row per id in silver: the id, its date, a hash of its contract values and the
object and row that delivered it. An object's rows claim their ids in one MERGE (insert when not
matched, under the object's application transaction id): the first object to claim an id owns it,
also when two validations race (optimistic concurrency), and a retry is a no-op. Only owned rows
go to silver; a row whose id another object owns is a duplicate (same values) or a conflict
(other values), quarantined with that reason.

A lookup reads only the id column and the owners of the buckets the object touches, never silver.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from jobs.shared import layout
from jobs.storage import tables
from jobs.storage.lake import Lake

log = logging.getLogger(__name__)

BUCKETS = 16  # hash buckets of the id: enough to prune a small delivery's lookup, few files per commit
# Above this many rows an object claims its ids one bucket at a time: a MERGE's hash join must fit
# DataFusion's memory pool (jobs.storage.tables.MERGE_MEMORY_BYTES), and it does not spill (1M rows into 1M failed).
BUCKET_MERGE_ROWS = 100_000
# The contract values a row hash covers: a duplicate has all of them equal, a conflict differs in one.
HASHED_COLUMNS = ["card_id", "customer_id", "merchant_id", "merchant_category", "amount", "currency",
                  "timestamp", "channel", "country", "is_fraud"]
INDEX_COLUMNS = ["bucket", "transaction_id", "date", "row_hash", "_source_key", "_source_sha256", "_source_row"]


def _index_sql(source: str) -> str:
    """DuckDB SELECT of the index rows of silver-shaped rows in ``source`` (a table name or a read_parquet)."""
    values = ", ".join(f"coalesce(CAST({c} AS VARCHAR), chr(0))" for c in HASHED_COLUMNS)
    return (f"SELECT substr(md5(transaction_id), 1, 1) AS bucket, transaction_id, date, "
            f"md5(concat_ws(chr(31), {values})) AS row_hash, _source_key, _source_sha256, "
            f"CAST(_source_row AS BIGINT) AS _source_row FROM {source}")


def _duckdb(workdir: Path):
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET threads = 2; SET memory_limit = '512MB'; SET temp_directory = '{workdir}'")
    return con


def index_rows(staged_silver: Path, out: Path, workdir: Path) -> list[str]:
    """Write the index rows of a staged silver file to ``out`` (Parquet); the buckets they fall in."""
    con = _duckdb(workdir)
    try:
        con.execute(f"COPY ({_index_sql('read_parquet(?)')} ORDER BY bucket, transaction_id) TO '{out}' "
                    "(FORMAT PARQUET)", [str(staged_silver)])
        return [b for (b,) in con.execute("SELECT DISTINCT bucket FROM read_parquet(?) ORDER BY 1",
                                          [str(out)]).fetchall()]
    finally:
        con.close()


def _reader(path: Path, bucket: str | None = None):
    """The index rows staged in ``path`` (only ``bucket``'s, when given) as a stream."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path, pre_buffer=False)
    schema = _schema()

    def batches():
        for batch in pf.iter_batches(batch_size=100_000, columns=INDEX_COLUMNS):
            batch = batch.cast(schema)
            yield batch if bucket is None else batch.filter(pc.equal(batch.column("bucket"), bucket))

    return pa.RecordBatchReader.from_batches(schema, batches())


def _schema():
    import pyarrow as pa

    return pa.schema([("bucket", pa.string()), ("transaction_id", pa.string()), ("date", pa.string()),
                      ("row_hash", pa.string()), ("_source_key", pa.string()), ("_source_sha256", pa.string()),
                      ("_source_row", pa.int64())])


def ensure_built(lake: Lake, workdir: Path) -> None:
    """Build the index from silver once, for a lake whose silver predates it (idempotent, streamed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if lake.exists(layout.ID_INDEX_READY):  # built (or started empty): the claims keep it whole
        return
    silver = tables.open_table(lake, layout.SILVER_TRANSACTIONS)
    if silver is None:
        lake.write_json(layout.ID_INDEX_READY, {"from_silver_version": None})
        return
    log.info("building the transaction-id index from silver (version %d): once, for a lake that predates it",
             silver.version())
    needed = ["transaction_id", "date", "_source_key", "_source_sha256", "_source_row", *HASHED_COLUMNS]
    built = workdir / "id-index-from-silver.parquet"
    # Staged to a local file first: delta-rs cannot read one table inside the MERGE of another.
    con = _duckdb(workdir)
    try:
        dataset = tables.dataset(lake, silver, layout.SILVER_TRANSACTIONS)
        with pq.ParquetWriter(built, _schema()) as writer:
            for batch in dataset.to_batches(columns=needed, batch_size=500_000, batch_readahead=1,
                                            fragment_readahead=1, **tables.SCAN):
                chunk = pa.Table.from_batches([batch])  # noqa: F841 (DuckDB reads it by its name)
                writer.write_table(con.sql(_index_sql("chunk")).to_arrow_table().cast(_schema()))
    finally:
        con.close()
    inserted = 0
    for bucket in (f"{b:x}" for b in range(BUCKETS)):  # bucket by bucket: bounded joins, resumable
        merged = tables.merge_new_rows(lake, layout.ID_INDEX, lambda b=bucket: _reader(built, b),
                                       keys=["bucket", "transaction_id"],
                                       app_id=f"ids-from-silver-v{silver.version()}-b{bucket}", partitions=[bucket],
                                       metadata={"step": "id-index", "from_silver_version": silver.version()})
        inserted += merged.get("num_target_rows_inserted", 0)
    built.unlink(missing_ok=True)
    # Written last: a build cut short is resumed (each bucket's MERGE skips by its app id), never trusted.
    lake.write_json(layout.ID_INDEX_READY, {"from_silver_version": silver.version()})
    log.info("transaction-id index built: %d ids", inserted)


@dataclass
class Claimed:
    """Which of an object's good rows (by ``_source_row``) own their id, and why the others do not."""

    owned: object  # numpy bool mask over the object's rows
    duplicate: object  # the id is owned by another row with the same values
    conflict: object  # the id is owned by another row with other values
    version: int | None  # the index version that holds the claims


def claim(lake: Lake, staged_silver: Path, total: int, key: str, digest: str, workdir: Path, run_id: str
          ) -> Claimed:
    """Claim the ids of one object's staged silver rows in the index; who owns each (see the module doc)."""
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    ensure_built(lake, workdir)
    source = workdir / "id-index.parquet"
    buckets = index_rows(staged_silver, source, workdir)
    ident = layout.object_id(key, digest)
    metadata = {"run_id": run_id, "object": key, "sha256": digest}
    if total <= BUCKET_MERGE_ROWS:  # one MERGE, one commit
        merged = tables.merge_new_rows(lake, layout.ID_INDEX, lambda: _reader(source),
                                       keys=["bucket", "transaction_id"], app_id=f"ids-{ident}", partitions=buckets,
                                       metadata=metadata)
    else:  # a large object claims bucket by bucket: each join holds one bucket's rows (DataFusion's pool)
        for bucket in buckets:
            merged = tables.merge_new_rows(lake, layout.ID_INDEX, lambda b=bucket: _reader(source, b),
                                           keys=["bucket", "transaction_id"], app_id=f"ids-{ident}-b{bucket}",
                                           partitions=[bucket], metadata=metadata)
    mine = pq.read_table(source, columns=["transaction_id", "row_hash", "_source_row"])
    owners = lookup(lake, mine.column("transaction_id"), buckets)
    joined = mine.join(owners, "transaction_id", join_type="left outer", right_suffix="_owner")
    rows = joined.column("_source_row").to_numpy()
    is_self = pc.and_(pc.equal(joined.column("_source_key"), key), pc.equal(joined.column("_source_sha256"), digest))
    is_self = pc.fill_null(pc.and_(is_self, pc.equal(joined.column("_source_row_owner"), joined.column("_source_row"))),
                           False).to_numpy(zero_copy_only=False)
    same = pc.fill_null(pc.equal(joined.column("row_hash"), joined.column("row_hash_owner")), False) \
        .to_numpy(zero_copy_only=False)
    owned, duplicate, conflict = (np.zeros(total, dtype=bool) for _ in range(3))
    owned[rows[is_self]] = True
    duplicate[rows[~is_self & same]] = True
    conflict[rows[~is_self & ~same]] = True
    return Claimed(owned, duplicate, conflict, merged.get("version"))


def lookup(lake: Lake, ids, buckets: list[str]):
    """The index rows (owner and row hash) of ``ids`` (a pyarrow string array), from the ``buckets`` partitions."""
    import pyarrow as pa
    import pyarrow.compute as pc

    owners = pa.schema([f for f in _schema() if f.name in ("transaction_id", "row_hash", "_source_key",
                                                          "_source_sha256", "_source_row")])
    table = tables.open_table(lake, layout.ID_INDEX)
    if table is None or not len(ids):
        return owners.empty_table()
    dataset = tables.dataset(lake, table, layout.ID_INDEX, buckets)
    condition = pc.field("transaction_id").cast(pa.string()).isin(ids.cast(pa.string()))
    kept = [pa.Table.from_batches([b]) for b in dataset.to_batches(
        columns=owners.names, filter=condition, batch_size=256_000, batch_readahead=1, fragment_readahead=1,
        **tables.SCAN) if b.num_rows]
    if not kept:
        return owners.empty_table()
    return pa.concat_tables(kept, promote_options="permissive").cast(owners)
