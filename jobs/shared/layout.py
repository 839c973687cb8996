"""The lake's layout: zones, table names, key builders and the one parser of a partition date.

Every job, sensor and Asset asks this module where a thing lives; nothing else writes
``f"reports/gate/date={d}/..."`` or parses ``date=`` out of a key.

```
raw/transactions/date=YYYY-MM-DD/<object>   as delivered, never modified or deleted
bronze/batches/<run id>/                    typed-as-delivered batch of one ingestion run
silver/transactions/                        Delta table, partitioned by date (MERGE on transaction_id)
quarantine/rows/                            Delta table of rejected rows as delivered, with reasons
quarantine/files/<run id>/<id>-<object>     unusable files, whole (named per object), with .reason.json
gold/features/                              Delta table, partitioned by date (predicate overwrite)
predictions/                                Delta table, partitioned by date (predicate overwrite)
reports/...                                 validation, gate, drift reports and Data Docs
_ledger/objects/                            Delta table: one row per ingested object (key + sha256)
_ledger/claims/                             one create-only claim per object being ingested
_ledger/transaction_ids/                    Delta table: who owns each id in silver (by id hash bucket)
```
"""

from __future__ import annotations

import hashlib
import re
from datetime import date as Date

RAW_TRANSACTIONS = "raw/transactions"
BRONZE_BATCHES = "bronze/batches"
SILVER_TRANSACTIONS = "silver/transactions"
QUARANTINE = "quarantine"
QUARANTINE_ROWS = "quarantine/rows"
QUARANTINE_FILES = "quarantine/files"
GOLD_FEATURES = "gold/features"
PREDICTIONS = "predictions"
DECISIONS = "decisions"  # every first answer of the scoring service, with the versions that gave it
REPORTS = "reports"
LEDGER = "_ledger/objects"
BATCH_MANIFEST = "_batch.json"  # in a bronze batch folder: what the batch holds, object by object
# Per step and partition: the inputs and outputs of its last success (see jobs/storage/unchanged.py).
STEP_RECORDS = "_ledger/steps"
COSTS = "_ledger/costs"  # one record per job task: wall, CPU, peak memory, rows (jobs/storage/costs.py)
CHECKPOINTS = "_ledger/checkpoints/train"  # one per training task under way (jobs/storage/checkpoints.py)
CLAIMS = "_ledger/claims"
# Every transaction id in silver, whatever its date, with its owner (see jobs/storage/id_index.py).
ID_INDEX = "_ledger/transaction_ids"
ID_INDEX_READY = "_ledger/transaction_ids.ready.json"  # the index holds every id of silver (jobs/storage/id_index.py)

# The Delta tables of the lake, and the column each one is partitioned by (None: unpartitioned).
TABLES: dict[str, str | None] = {
    SILVER_TRANSACTIONS: "date",
    QUARANTINE_ROWS: "delivery_date",
    GOLD_FEATURES: "date",
    PREDICTIONS: "date",
    DECISIONS: "date",
    LEDGER: None,
    ID_INDEX: "bucket",
}

_DATE_IN_KEY = re.compile(r"(?:^|/)date=(\d{4}-\d{2}-\d{2})(?:/|$)")


def partition_date(key: str) -> Date | None:
    """The ``date=YYYY-MM-DD`` partition a key lies in, or None (also for an impossible date)."""
    m = _DATE_IN_KEY.search(key)
    if not m:
        return None
    try:
        return Date.fromisoformat(m.group(1))
    except ValueError:
        return None


def date_partition(zone: str, date: Date | str) -> str:
    """Key of one date partition of a zone, e.g. ``raw/transactions/date=2026-11-21``."""
    return f"{zone}/date={date}"


def raw_object(date: Date | str, name: str) -> str:
    """Key of a delivered object."""
    return f"{date_partition(RAW_TRANSACTIONS, date)}/{name}"


def bronze_batch(run_id: str) -> str:
    return f"{BRONZE_BATCHES}/{run_id}"


def quarantined_files(run_id: str) -> str:
    """The folder of the unusable files one ingestion run kept."""
    return f"{QUARANTINE_FILES}/{run_id}"


REASON_SUFFIX = ".reason.json"


def quarantine_reason(quarantined: str) -> str:
    """The reason record beside a quarantined file (:func:`quarantined_file`)."""
    return quarantined + REASON_SUFFIX


def reason_of(key: str) -> str | None:
    """The quarantined file a reason record stands for; None for any other key."""
    return key.removesuffix(REASON_SUFFIX) if key.endswith(REASON_SUFFIX) else None


def run_of_quarantined(key: str) -> str:
    """The ingestion run that kept a quarantined file (or its reason)."""
    return key.removeprefix(QUARANTINE_FILES + "/").split("/", 1)[0]


def quarantined_file(run_id: str, key: str, sha256: str) -> str:
    """Where an unusable delivered object is kept whole (its reason: :func:`quarantine_reason`).

    Named per object (key + content), so two rejected ``export.csv`` of two days never overwrite
    each other; the delivered name stays at the end, readable.
    """
    return f"{quarantined_files(run_id)}/{object_id(key, sha256)}-{key.rsplit('/', 1)[-1]}"


# Zero-information objects that writers leave beside data (Hadoop/Spark markers, checksums, folder
# placeholders): never deliveries. Hidden names (leading "_" or ".") follow Hadoop's convention.
def is_marker(key: str) -> bool:
    """Whether a raw key is a marker, a checksum or a folder placeholder, not a delivery."""
    name = key.rsplit("/", 1)[-1]
    return key.endswith("/") or not name or name.startswith(("_", ".")) or name.endswith(".crc")


def claim(key: str, sha256: str) -> str:
    """The claim object of one delivered object (key + content)."""
    return f"{CLAIMS}/{hashlib.sha256(key.encode()).hexdigest()[:24]}-{sha256[:24]}.json"


UNREADABLE = "_ledger/unreadable"


def read_attempts(key: str, tag: str | None) -> str:
    """The failed-read record of one listed object (key + version tag): how often, and the last error."""
    return f"{UNREADABLE}/{hashlib.sha256(f'{key}@{tag}'.encode()).hexdigest()[:32]}.json"


def champion_pin(run_id: str) -> str:
    """What one Airflow run pinned as the champion it acts on (written once, create-only)."""
    return f"_ledger/champion_pins/{hashlib.sha256(run_id.encode()).hexdigest()[:32]}.json"


def challenger_pin(run_id: str) -> str:
    """The challenger one watch_challenger run watches (written once, create-only)."""
    return f"_ledger/challenger_pins/{hashlib.sha256(run_id.encode()).hexdigest()[:32]}.json"


def task_digest(dag_id: str, run_id: str, task_id: str) -> str:
    """A short, stable identity of one Airflow task of one run (every try of it shares it)."""
    return hashlib.sha256(f"{dag_id}\n{run_id}\n{task_id}".encode()).hexdigest()[:32]


def checkpoint(owner: str) -> str:
    """The training checkpoint of ``owner``: ``airflow-<task_digest>`` or ``manual-<date>-<inputs>``."""
    return f"{CHECKPOINTS}/{owner}.pt"


def cost_record(date: Date | str | None, step: str, owner: str) -> str:
    """What one job task (``owner``) of ``step`` cost, under the date it worked on."""
    return f"{COSTS}/date={date or 'none'}/{step}-{owner}.json"


def object_id(key: str, sha256: str) -> str:
    """A short, stable identity of one delivered object (key + content), used as a Delta app id."""
    return f"{hashlib.sha256(key.encode()).hexdigest()[:16]}-{sha256[:16]}"


def validation_report(run_id: str) -> str:
    return f"{REPORTS}/validation/{run_id}.json"


def data_docs(run_id: str) -> str:
    return f"{DATA_DOCS}/{run_id}"


GATE_REPORTS = f"{REPORTS}/gate"
DRIFT_REPORTS = f"{REPORTS}/drift"
DATA_DOCS = f"{REPORTS}/data_docs"


def gate_reports(date: Date | str) -> str:
    return f"{GATE_REPORTS}/date={date}"


def gate_report(date: Date | str, version: str, ext: str) -> str:
    return f"{gate_reports(date)}/v{version}.{ext}"


def gate_plots(date: Date | str, version: str) -> str:
    """The folder of the model card's plots, beside the gate report that embeds them."""
    return f"{gate_reports(date)}/v{version}"


def gate_plot(date: Date | str, version: str, name: str) -> str:
    return f"{gate_plots(date, version)}/{name}"


def drift_report(date: Date | str, ext: str) -> str:
    return f"{DRIFT_REPORTS}/date={date}/drift.{ext}"


DRIFT_SIGNAL = DRIFT_REPORTS
RETRAIN_REQUESTS = f"{DRIFT_REPORTS}/_retrain_requests"


def retrain_request(date: Date | str) -> str:
    return f"{RETRAIN_REQUESTS}/date={date}.json"


def retrain_request_date(key: str) -> str:
    """The date of a retraining request, from its key (see :func:`retrain_request`)."""
    return key.rsplit("/date=", 1)[-1].removesuffix(".json")


def step_record(step: str, key: str) -> str:
    """Where ``step`` records its last success for ``key`` (a date or a date range)."""
    return f"{STEP_RECORDS}/{step}/{key.replace('/', '_')}.json"
