"""Ingestion cost, side by side with its floor, and how it grows with data size.

For each size it generates one CSV delivery of N rows into a fresh folder lake, then measures
whole processes (wall time and peak RSS summed over each process tree, sampled every 20 ms):

- floor: pyarrow reads the CSV and writes Parquet (what any ingestion must at least do);
- ours: ``python -m jobs ingest`` + ``python -m jobs validate`` (contract, silver MERGE,
  quarantine, ledger, Data Docs), the ratio to the floor beside it, and the same ratio less the
  fixed cost of both processes (measured on a 1,000-row delivery), which dominates small files.

Then the cost of a run that finds nothing new, with 10, 100 and 1,000 objects already in the
ledger: it must stay flat (a listing and a ledger read; no object is downloaded).

    .venv/bin/python bench/ingestion.py --rows 100000,1000000 --objects 10,100,1000
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from procs import wait_for_peak_rss  # noqa: E402  (bench/procs.py, beside this script)

DATE = "2026-09-10"


def measure(cmd: list[str], env: dict) -> tuple[float, float]:
    """Wall seconds and peak RSS (GiB) of one child process, summed with the processes it starts
    (validate runs its contract in a child of its own), sampled every 20 ms."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        tree_peak = wait_for_peak_rss(proc, every=0.02)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"{' '.join(cmd)} failed:\n{err.read().decode(errors='replace')[-3000:]}")
    return wall, tree_peak / 2**30


FLOOR = """
import sys, pyarrow.csv as csv, pyarrow.parquet as pq
pq.write_table(csv.read_csv(sys.argv[1]), sys.argv[2])
"""


GENERATE = """
import sys
from jobs.devkit.generate import generate_day
rows = int(sys.argv[2])
generate_day(sys.argv[1], rows, n_cards=max(1000, rows // 50)).to_csv(sys.argv[3], index=False)
"""


def in_child(code: str, *args: str) -> None:
    """Run setup work in a child, so this process stays small (a forked child starts with its RSS)."""
    subprocess.run([sys.executable, "-c", code, *args], check=True, cwd=ROOT)


def one_size(rows: int, workdir: Path) -> dict:
    state = workdir / f"state-{rows}"
    raw = state / "lake" / "raw" / "transactions" / f"date={DATE}"
    raw.mkdir(parents=True)
    csv_path = raw / "transactions.csv"
    in_child(GENERATE, DATE, str(rows), str(csv_path))
    env = {**os.environ, "PIPELINE_STATE_DIR": str(state), "PIPELINE_LAKE_URI": "", "PIPELINE_MAX_OBJECT_MB": "4096",
           "PIPELINE_MAX_DECOMPRESSED_MB": "8192"}
    floor_wall, floor_rss = measure([sys.executable, "-c", FLOOR, str(csv_path), str(workdir / "floor.parquet")], env)
    ingest_wall, ingest_rss = measure([sys.executable, "-m", "jobs", "ingest", "--date", DATE, "--run-id", "b"], env)
    validate_wall, validate_rss = measure(
        [sys.executable, "-m", "jobs", "validate", "--date", DATE, "--run-id", "b"], env)
    return {"rows": rows, "mb": csv_path.stat().st_size / 1e6, "floor_s": floor_wall, "floor_gib": floor_rss,
            "ingest_s": ingest_wall, "ingest_gib": ingest_rss, "validate_s": validate_wall,
            "validate_gib": validate_rss}


SEED = """
import sys
from jobs.devkit.generate import generate_day
from jobs.storage.ledger import record_in_ledger
from jobs.storage.raw import sha256
from jobs.storage.lake import open_lake
from jobs.shared.layout import raw_object
lake, objects, date = open_lake(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
day = generate_day(date, 10).to_csv(index=False).encode()
for i in range(objects):
    lake.write_bytes(raw_object(date, f"part-{i:05d}.csv"), day)
record_in_ledger(lake, [
    {"key": o.key, "sha256": sha256(lake.read_bytes(o.key)), "status": "ingested", "rows_delivered": 10,
     "rows_silver": 10, "rows_quarantined": 0, "run_id": "seed", "ingested_at": "2026-09-10T00:00:00+00:00",
     "size": o.size, "tag": o.tag} for o in lake.list_objects("raw/transactions")])
"""


def nothing_new(objects: int, workdir: Path) -> dict:
    """A lake whose ``objects`` deliveries are all in the ledger; time an ingestion run."""
    state = workdir / f"idle-{objects}"
    in_child(SEED, (state / "lake").as_uri(), str(objects), DATE)
    env = {**os.environ, "PIPELINE_STATE_DIR": str(state), "PIPELINE_LAKE_URI": ""}
    wall, rss = measure([sys.executable, "-m", "jobs", "ingest", "--date", DATE, "--run-id", "idle"], env)
    return {"objects": objects, "wall_s": wall, "gib": rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="100000,1000000", help="comma-separated delivery sizes")
    parser.add_argument("--objects", default="10,100,1000", help="comma-separated ledger sizes for the idle run")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="bench-ingestion-") as tmp:
        workdir = Path(tmp)
        tiny = one_size(1000, workdir)
        fixed = tiny["ingest_s"] + tiny["validate_s"] - tiny["floor_s"]
        print(f"\nfixed cost of ingest + validate (a 1,000-row delivery, less its floor): {fixed:.2f} s "
              "(process start-up, imports: Great Expectations alone takes about 2.3 s, Data Docs)")
        print("\none delivery: ingest + validate vs the Arrow floor (read CSV, write Parquet)")
        print(f"{'rows':>9} {'MB':>6} | {'floor s':>8} {'GiB':>5} | {'ingest s':>8} {'GiB':>5} | "
              f"{'validate s':>10} {'GiB':>5} | {'ours/floor':>10} {'less fixed':>10}")
        for rows in (int(r) for r in args.rows.split(",")):
            r = one_size(rows, workdir)
            ours = r["ingest_s"] + r["validate_s"]
            print(f"{r['rows']:>9} {r['mb']:>6.1f} | {r['floor_s']:>8.2f} {r['floor_gib']:>5.2f} | "
                  f"{r['ingest_s']:>8.2f} {r['ingest_gib']:>5.2f} | {r['validate_s']:>10.2f} "
                  f"{r['validate_gib']:>5.2f} | {ours / r['floor_s']:>9.1f}x {(ours - fixed) / r['floor_s']:>9.1f}x",
                  flush=True)
        print("\na run that finds nothing new (every object already in the ledger)")
        print(f"{'objects':>8} | {'ingest s':>8} {'GiB':>5}")
        for n in (int(o) for o in args.objects.split(",")):
            r = nothing_new(n, workdir)
            print(f"{r['objects']:>8} | {r['wall_s']:>8.2f} {r['gib']:>5.2f}", flush=True)


if __name__ == "__main__":
    main()
