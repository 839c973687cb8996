"""Point-in-time feature build on Spark: per-card behaviour from transactions strictly before.

A feature of a transaction at time ``t`` only sees the same card's transactions in
``[t - window, t - 1s]``; nothing at or after ``t`` leaks in. The same
:func:`build_features` serves training and scoring (both read ``gold/features``).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from jobs.ml.features_spark import build_features
from jobs.shared import layout
from jobs.shared.dates import date_range, shifted
from jobs.shared.schemas import LOOKBACK_DAYS
from jobs.storage import lake as lk
from jobs.storage import unchanged

log = logging.getLogger(__name__)



CONTRACT_ROWS = 500_000  # rows per Great Expectations run of the gold contract (its memory grows with them)
MIN_JAVA = 17  # Spark 4 runs on Java 17 or 21
JAVA_FIX = ("install a Java 17+ runtime (Debian/Ubuntu: apt-get install openjdk-17-jre-headless; macOS: "
            "brew install openjdk@17) or point JAVA_HOME at one")


def java_major(version_output: str) -> int | None:
    """The major version in ``java -version`` output: 'version "17.0.13"' -> 17, '"1.8.0_401"' -> 8."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if match is None:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def require_java() -> str:
    """The ``java`` that Spark will start (JAVA_HOME's, else PATH's), checked to be 17+.

    Raises :class:`MissingRuntime` (not retried) instead of letting Spark die with a gateway traceback.
    """
    from jobs.shared.result import MissingRuntime

    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    where = f"JAVA_HOME={home}" if home else "PATH"
    if not java or not os.access(java, os.X_OK):
        raise MissingRuntime(f"Spark needs Java {MIN_JAVA}+, and no java was found on {where}: {JAVA_FIX}")
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MissingRuntime(f"Spark needs Java {MIN_JAVA}+, and {java} -version failed ({exc}): {JAVA_FIX}") from exc
    major = java_major(out.stderr + out.stdout)
    if major is None or major < MIN_JAVA:
        first = (out.stderr + out.stdout).strip().splitlines()[:1]
        raise MissingRuntime(f"Spark needs Java {MIN_JAVA}+, and {java} (from {where}) is "
                             f"{first[0] if first else 'unreadable'}: {JAVA_FIX}")
    return java


def spark_session(master: str, driver_memory: str = "1g", app_name: str = "fraud-features"):
    """A Spark session in UTC with small-data friendly defaults (after checking for Java 17+)."""
    require_java()
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.driver.memory", driver_memory)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", "8")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("WARN")
    return spark


def check_contract(frame, dates: list[str], expectations_dir: Path) -> None:
    """Validate a build (or one date of it) against ``expectations/gold_features.json`` (one run) before
    publishing it."""
    from jobs.shared.result import JobError

    broken = contract_breaks(frame, expectations_dir)
    if broken:
        raise JobError(_broken_message(dates, len(frame), broken))


def contract_breaks(frame, expectations_dir: Path) -> dict[str, int]:
    """The gold contract's broken rules on ``frame``, with their failing rows (empty when it holds)."""
    from jobs.quality.contract import load_suite_json, row_failures

    _, summaries = row_failures(frame, load_suite_json(expectations_dir, "gold_features.json"))
    return {s["rule"]: int(s["failing_rows"]) for s in summaries if not s["success"]}


def _broken_message(dates: list[str], rows: int, broken: dict[str, int],
                    where: dict[str, list[str]] | None = None) -> str:
    return (f"gold features for {dates[0]}..{dates[-1]} break their contract ({rows} rows); nothing was published: "
            + "; ".join(f"{rule} ({n} rows{' on ' + ', '.join(where[rule]) if where else ''})"
                        for rule, n in broken.items()))


def build_gold(lake: lk.Lake, start: str, end: str, master: str, driver_memory: str,
               expectations_dir: Path, staging_dir: Path | None = None, run_id: str = "",
               code_version: str = "", force: bool = False) -> dict:
    """Build ``gold/features`` for every silver date in [start, end] and publish them in one commit.

    Skipped (no Spark at all) when the silver files behind the range, the code version and the
    gold files it published are what they were at the range's last build; ``force`` builds anyway.

    Spark reads one snapshot (version) of the silver table through its file list, writes its
    output once into a staging folder (``staging_dir``, shared by all executors on a cluster);
    the build is checked against the gold contract, then every built date is replaced in the
    gold Delta table by one predicate overwrite: readers see the old range or the new one.
    """
    from jobs.storage import tables

    # One silver version is read, and recorded, from start to end: rows a validation commits
    # meanwhile are in neither the build nor its skip records, so the next run builds them.
    silver_version = tables.version(lake, layout.SILVER_TRANSACTIONS)
    silver_dates = tables.partitions(lake, layout.SILVER_TRANSACTIONS, silver_version)
    targets, inputs = _build_inputs(lake, start, end, code_version, silver_dates, silver_version)
    later = _stale_later_days(lake, end, code_version, silver_dates, silver_version) if targets else []
    if later:  # late rows: the built days whose look-back window they fall in are stale too
        log.info("%d later built day(s) read %s .. %s in their %d-day look-back and are stale (late rows?): "
                 "building %s .. %s", len(later), targets[0], end, LOOKBACK_DAYS, start, later[-1])
        end = later[-1]
        targets, inputs = _build_inputs(lake, start, end, code_version, silver_dates, silver_version)
    if not targets:
        return {"dates": [], "rows": 0, "gold": lake.uri_of(layout.GOLD_FEATURES),
                "note": f"no silver partitions in [{start}, {end}]"}
    history = [d for d in silver_dates if _history_start(start) <= d <= end]

    def outputs_of(days: list[str], result: dict | None) -> dict:
        at = None if result is None else result["gold_version"]
        return {"gold": tables.snapshot_of(lake, layout.GOLD_FEATURES, days, at)}

    def days_of(result: dict):  # a range built: each day's own record, for a later run of one day
        for day in targets if len(targets) > 1 else ():
            day_inputs = _build_inputs(lake, day, day, code_version, silver_dates, silver_version)[1]
            yield (day, day_inputs, {**result, "dates": [day], "rows": result["rows_by_date"].get(day, 0)},
                   outputs_of([day], result))

    def work() -> dict:
        return _build_and_publish(lake, targets, history, silver_version, master, driver_memory,
                                  expectations_dir, staging_dir, run_id)

    key = start if start == end else f"{start}..{end}"
    return unchanged.once(lake, "features", key, inputs, work, force=force,
                          outputs=lambda result: outputs_of(targets, result), run_id=run_id, parts=days_of)


def _history_start(start: str) -> str:
    """The first silver day a build from ``start`` reads: its look-back window."""
    return shifted(start, -LOOKBACK_DAYS)


def _build_and_publish(lake: lk.Lake, targets: list[str], history: list[str], silver_version: int | None,
                       master: str, driver_memory: str, expectations_dir: Path, staging_dir: Path | None,
                       run_id: str) -> dict:
    """Spark over the silver files of ``history`` (targets and look-back), checked, one gold commit."""
    import pyarrow as pa
    import pyarrow.dataset as ds
    from pyspark.sql import functions as F

    from jobs.storage import tables

    spark = spark_session(master, driver_memory)
    running = True
    if staging_dir is not None:
        Path(staging_dir).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="gold-build-", dir=staging_dir))
    try:
        uris = tables.files(lake, layout.SILVER_TRANSACTIONS, history, version=silver_version)
        with lake.local_files(uris, staging_dir) as paths:
            log.info("reading silver v%s: %d files of %d dates (%s .. %s) with Spark %s", silver_version, len(paths),
                     len(history), history[0], history[-1], master)
            started = time.perf_counter()
            feats = build_features(spark.read.parquet(*paths)).where(F.col("date").isin(targets))
            feats.repartition("date").write.mode("overwrite").partitionBy("date").parquet(str(staging / "out"))
        # The output is read back from the staging folder (the plan runs once), in pieces: memory holds
        # one piece of one date (the contract), never the range.
        partitioning = ds.partitioning(pa.schema([("date", pa.string())]), flavor="hive")
        built = ds.dataset(str(staging / "out"), format="parquet", partitioning=partitioning)
        rows = built.count_rows()
        seconds = time.perf_counter() - started
        log.info("computed %d feature rows for %d dates in %.1f s (%.0f rows/s)", rows, len(targets), seconds,
                 rows / max(seconds, 1e-9))
        _ids_unique_across_dates(spark, staging / "out", targets, rows, expectations_dir)
        spark.stop()  # Spark's last work is done: its JVM's memory goes back before the contract runs here
        running = False
        started = time.perf_counter()
        counts = _contract_per_date(built, targets, expectations_dir)
        log.info("gold contract passed on %d rows of %d dates in %.1f s", rows, len(targets),
                 time.perf_counter() - started)
        gold_version = tables.replace_partitions(
            lake, layout.GOLD_FEATURES, built, targets,
            metadata={"run_id": run_id, "silver_version": silver_version, "dates": f"{targets[0]}..{targets[-1]}"})
        log.info("published gold features v%s for %d dates (%s .. %s): %d rows", gold_version, len(targets),
                 targets[0], targets[-1], rows)
    finally:
        if running:
            spark.stop()
        shutil.rmtree(staging, ignore_errors=True)
    return {"dates": targets, "rows": rows, "gold": lake.uri_of(layout.GOLD_FEATURES),
            "rows_by_date": counts, "gold_version": gold_version, "silver_version": silver_version}


def _contract_per_date(built, targets: list[str], expectations_dir: Path) -> dict[str, int]:
    """Rows per built date, each date checked against the gold contract on its own, in pieces of at most
    ``CONTRACT_ROWS`` (one feature row per transaction is checked whole, across dates, by
    :func:`_ids_unique_across_dates`); every broken rule of every date is reported before anything
    is published."""
    import pyarrow.dataset as ds

    from jobs.shared.result import JobError

    counts: dict[str, int] = {}
    broken: dict[str, int] = {}
    where: dict[str, list[str]] = {}
    for day in targets:
        counts[day] = 0
        for batch in built.to_batches(filter=ds.field("date") == day, batch_size=CONTRACT_ROWS, batch_readahead=0,
                                      fragment_readahead=1):
            frame = batch.to_pandas()
            counts[day] += len(frame)
            for rule, n in contract_breaks(frame, expectations_dir).items():
                broken[rule] = broken.get(rule, 0) + n
                if day not in where.setdefault(rule, []):
                    where[rule].append(day)
            del frame
    if broken:
        raise JobError(_broken_message(targets, sum(counts.values()), broken, where))
    return {d: n for d, n in counts.items() if n}


def _ids_unique_across_dates(spark, out: Path, targets: list[str], rows: int, expectations_dir: Path) -> None:
    """The contract's unique transaction ids (when it asks for them) across the whole build, not only
    within each date: Spark counts them from the staged output (its memory spills; the driver's does
    not grow)."""
    from jobs.quality.contract import load_suite_json, rule_of
    from jobs.shared.result import JobError

    rule = rule_of(load_suite_json(expectations_dir, "gold_features.json"), "expect_column_values_to_be_unique",
                   "transaction_id")
    if rule is None:
        return
    ids = spark.read.parquet(str(out)).select("transaction_id")
    repeated = ids.groupBy("transaction_id").count().where("count > 1")
    found = repeated.orderBy("transaction_id").limit(5).collect()
    if found:
        extra = repeated.selectExpr("sum(count - 1) as n").collect()[0]["n"]
        raise JobError(_broken_message(targets, rows, {f"{rule} across dates": int(extra)}) + " (e.g. "
                       + ", ".join(r["transaction_id"] for r in found) + ")")


def _stale_later_days(lake: lk.Lake, end: str, code_version: str, silver_dates: list[str],
                      silver_version: int | None) -> list[str]:
    """Built gold days after ``end`` whose look-back reaches ``end`` and whose inputs changed since their build.

    A row that arrives late for day D changes the windows (1 h, 24 h, 7 d counts and sums, novelty)
    of every day up to D + ``LOOKBACK_DAYS``: those days' silver inputs differ from what their
    skip records say, so they are rebuilt with D, in the same commit.
    """
    from jobs.storage import tables

    last = shifted(end, LOOKBACK_DAYS)
    built = [d for d in tables.partitions(lake, layout.GOLD_FEATURES) if end < d <= last and d in set(silver_dates)]
    stale = []
    for day in built:
        day_inputs = _build_inputs(lake, day, day, code_version, silver_dates, silver_version)[1]
        outputs = {"gold": tables.snapshot_of(lake, layout.GOLD_FEATURES, [day])}
        if unchanged.previous(lake, "features", day, day_inputs, outputs) is None:
            stale.append(day)
    return stale


def _build_inputs(lake: lk.Lake, start: str, end: str, code_version: str,
                  silver_dates: list[str], silver_version: int | None) -> tuple[list[str], dict]:
    """The dates a build of [start, end] makes and what they are built from (``jobs.storage.unchanged``):
    the silver files of the range and its look-back window in the version read, and the code version."""
    from jobs.storage import tables

    available = [d for d in silver_dates if _history_start(start) <= d <= end]
    targets = [d for d in date_range(start, end) if d in available]
    return targets, {"dates": targets, "code_version": code_version,
                     "silver": tables.snapshot_of(lake, layout.SILVER_TRANSACTIONS, available, silver_version)}
