"""Global transaction-id uniqueness: the cost of claiming a delivery's ids against all of history.

Silver is partitioned by date, so "is this id anywhere in silver?" cannot be answered by the
partitions a delivery touches. The project answers it with the id index (jobs/storage/id_index.py, a
narrow Delta table bucketed by a hash of the id). For histories of 1M and 10M ids this prints, per
delivery size, side by side:

- floor: pyarrow reads the index's id column and checks the delivery's ids against it
  (``is_in``): the least any exact global check must do, with nothing written;
- ours: ``id_index.claim`` (hash the rows, one MERGE under the object's transaction id, read the
  owners back), the ratio to the floor beside it;
- how both grow from 1M to 10M ids of history.

    .venv/bin/python bench/id_index.py --history 1000000,10000000 --deliveries 10000,1000000
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DAY = "2026-09-10"


def silver_like(path: Path, first: int, rows: int, source: str) -> None:
    """A staged silver file (validate's schema) of ``rows`` ids starting at ``first``."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jobs.steps.validate import SILVER_SCHEMA_FIELDS, _arrow_schema

    rng = np.random.default_rng(first)
    ids = np.arange(first, first + rows)
    schema = _arrow_schema(SILVER_SCHEMA_FIELDS)
    table = pa.table({
        "transaction_id": pa.array([f"txn_{i:012d}" for i in ids]),
        "card_id": pa.array([f"card_{i % 50_000:06d}" for i in ids]),
        "customer_id": pa.array([f"cust_{i % 25_000:06d}" for i in ids]),
        "merchant_id": pa.array([f"m_{i % 5_000:05d}" for i in ids]),
        "merchant_category": pa.array(["grocery"] * rows),
        "amount": pa.array(rng.gamma(2.0, 30.0, rows)),
        "currency": pa.array(["USD"] * rows),
        "timestamp": pa.array(np.datetime64(f"{DAY}T00:00:00") + (ids % 86_400).astype("timedelta64[s]"),
                              pa.timestamp("us")),
        "channel": pa.array(["pos"] * rows), "country": pa.array(["US"] * rows),
        "is_fraud": pa.array(np.zeros(rows, dtype="int64")),
        "_source_key": pa.array([source] * rows), "_source_sha256": pa.array([source] * rows),
        "_source_row": pa.array(np.arange(rows, dtype="int64")), "date": pa.array([DAY] * rows),
    })
    pq.write_table(table.cast(schema), path)


def floor(lake, ids) -> float:
    import pyarrow.compute as pc

    from jobs.shared import layout
    from jobs.storage import tables

    t0 = time.perf_counter()
    table = tables.open_table(lake, layout.ID_INDEX)
    known = tables._dataset(table, layout.ID_INDEX).to_table(columns=["transaction_id"], **tables.SCAN)
    hits = pc.sum(pc.is_in(ids, value_set=known.column("transaction_id").combine_chunks())).as_py()
    assert hits == 0
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history", default="1000000,10000000")
    parser.add_argument("--deliveries", default="10000,1000000")
    args = parser.parse_args()
    import pyarrow.parquet as pq

    from jobs.storage import id_index
    from jobs.storage.lake import LocalLake

    print(f"machine: {platform.machine()}, {platform.python_version()}, cores: "
          f"{len(__import__('os').sched_getaffinity(0))}")
    print(f"{'history':>10} {'delivery':>9} {'floor s':>8} {'claim s':>8} {'ratio':>6} {'dup found':>9}")
    for history in (int(h) for h in args.history.split(",")):
        with tempfile.TemporaryDirectory(prefix="bench-ids-") as tmp:
            tmp = Path(tmp)
            lake = LocalLake((tmp / "lake").as_uri())
            step = 1_000_000
            for start in range(0, history, step):  # the history, claimed a million at a time
                part = tmp / f"hist-{start}.parquet"
                silver_like(part, start, min(step, history - start), f"history-{start}")
                name = f"history-{start}"
                id_index.claim(lake, part, min(step, history - start), name, name, tmp, "bench")
                part.unlink()
            for rows in (int(d) for d in args.deliveries.split(",")):
                delivery = tmp / f"new-{rows}.parquet"
                silver_like(delivery, 10**11 + rows, rows, f"new-{rows}")
                ids = pq.read_table(delivery, columns=["transaction_id"]).column("transaction_id").combine_chunks()
                floor_s = floor(lake, ids)
                t0 = time.perf_counter()
                claimed = id_index.claim(lake, delivery, rows, f"new-{rows}", f"new-{rows}", tmp, "bench")
                claim_s = time.perf_counter() - t0
                assert claimed.owned.all()
                # The same ids again, in another object: every one is found, wherever its date.
                again = tmp / f"again-{rows}.parquet"
                silver_like(again, 10**11 + rows, rows, f"again-{rows}")
                dup = id_index.claim(lake, again, rows, f"again-{rows}", f"again-{rows}", tmp, "bench")
                print(f"{history:>10,} {rows:>9,} {floor_s:>8.2f} {claim_s:>8.2f} {claim_s / floor_s:>5.1f}x "
                      f"{int(dup.duplicate.sum()):>9,}")
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
