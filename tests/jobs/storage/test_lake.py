import pytest

from jobs.storage.lake import LakeError, open_lake


def test_publish_swaps_whole_partition(lake):
    with lake.publish("zone/date=2026-01-01") as folder:
        (folder / "a.txt").write_text("first")
    with lake.publish("zone/date=2026-01-01") as folder:
        (folder / "b.txt").write_text("second")
    assert [k.rsplit("/", 1)[-1] for k in lake.list("zone")] == ["b.txt"]
    assert lake.list_partitions("zone") == ["2026-01-01"]


def test_failed_publish_keeps_old_partition_and_leaves_no_staging(lake):
    with lake.publish("zone/date=2026-01-01") as folder:
        (folder / "a.txt").write_text("good")
    with pytest.raises(RuntimeError):
        with lake.publish("zone/date=2026-01-01") as folder:
            (folder / "half.txt").write_text("half")
            raise RuntimeError("killed mid-write")
    assert [k.rsplit("/", 1)[-1] for k in lake.list("zone")] == ["a.txt"]
    assert lake.read_bytes(lake.list("zone")[0]) == b"good"


def test_unsupported_scheme_is_a_clear_error():
    with pytest.raises(LakeError, match="scheme 'gs' is not supported"):
        open_lake("gs://bucket/lake")


def test_missing_object_names_its_uri(lake):
    with pytest.raises(LakeError, match="raw/nothing.csv does not exist"):
        lake.read_bytes("raw/nothing.csv")


def test_partition_being_published_is_invisible_until_done(lake, tmp_path):
    folder = tmp_path / "build"
    folder.mkdir()
    (folder / "part-0.txt").write_text("new")
    with lake.publish("zone/date=2026-01-02") as staging:
        (staging / "x.txt").write_text("x")
        assert lake.list_partitions("zone") == []  # nothing visible mid-write
    assert lake.list_partitions("zone") == ["2026-01-02"]


def test_parquet_round_trip_and_a_missing_object_is_an_error(lake):
    import pandas as pd

    from jobs.storage.lake import ObjectMissing

    frame = pd.DataFrame({"a": range(5)})
    with lake.publish("zone/date=2026-01-03") as folder:
        frame.to_parquet(folder / "part-0.parquet")
    assert lake.read_parquet("zone/date=2026-01-03")["a"].tolist() == list(range(5))
    with pytest.raises(ObjectMissing):  # never an empty frame: a missing input must not look like no rows
        lake.read_parquet("zone/date=1999-01-01")


def test_a_publish_killed_halfway_leaves_the_old_partition_and_the_retry_completes(lake, tmp_path):
    """The crash is injected inside the backend's own publishing step (upload / rename)."""
    import jobs.storage.lake.local as lake_module
    from jobs.storage.lake import S3Lake

    with lake.publish("zone/date=2026-01-04") as folder:
        (folder / "part-0.txt").write_text("old")
    build = tmp_path / "build"
    build.mkdir()
    for i in range(3):
        (build / f"part-{i}.txt").write_text(f"new {i}")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed")

    with pytest.MonkeyPatch.context() as mp:
        if isinstance(lake, S3Lake):
            real, calls = lake.s3.upload_file, []

            def crash_on_second_upload(*args, **kwargs):
                calls.append(args)
                return killed() if len(calls) == 2 else real(*args, **kwargs)

            mp.setattr(lake.s3, "upload_file", crash_on_second_upload)
        else:
            mp.setattr(lake_module, "exchange_paths", killed)  # the swap (renameat2)
            mp.setattr(lake_module.os, "replace", killed)  # or the renames where it is missing
        with pytest.raises(KeyboardInterrupt):
            lake.publish_folder(build, "zone/date=2026-01-04")
    assert [lake.read_bytes(k) for k in lake.list("zone")] == [b"old"]
    lake.publish_folder(build, "zone/date=2026-01-04")
    assert sorted(lake.read_bytes(k) for k in lake.list("zone")) == [b"new 0", b"new 1", b"new 2"]



def test_concurrent_appends_lose_no_line(state_dir):
    """Eight writers append to one ledger of a folder lake at once (O_APPEND writes)."""
    from concurrent.futures import ThreadPoolExecutor

    from jobs.storage.lake import get_lake

    lake = get_lake()

    def writer(n: int) -> None:
        for i in range(6):
            lake.append_line("_ledger/test.jsonl", f'{{"writer": {n}, "line": {i}}}')

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(writer, range(8)))
    lines = lake.read_bytes("_ledger/test.jsonl").decode().splitlines()
    assert sorted(lines) == sorted(f'{{"writer": {n}, "line": {i}}}' for n in range(8) for i in range(6))


def test_s3_append_retries_when_another_writer_got_there_first(s3_env, monkeypatch):
    """Another writer appends between our read and our write: our conditional PUT fails and is redone.

    The interleaving is forced (the other append happens right after our first read), because moto's
    server does not make its conditional checks atomic under concurrent requests; S3 does.
    """
    ours, theirs = open_lake(f"s3://{s3_env}/lake"), open_lake(f"s3://{s3_env}/lake")
    ours.append_line("_ledger/l.jsonl", "first")
    real_get, reads = ours.s3.get_object, []

    def read_then_someone_appends(**kwargs):
        got = real_get(**kwargs)
        reads.append(kwargs["Key"])
        if len(reads) == 1:
            theirs.append_line("_ledger/l.jsonl", "theirs")
        return got

    monkeypatch.setattr(ours.s3, "get_object", read_then_someone_appends)
    ours.append_line("_ledger/l.jsonl", "ours")
    assert len(reads) == 2, "the stale write must have been refused and retried"
    assert ours.read_bytes("_ledger/l.jsonl").decode().splitlines() == ["first", "theirs", "ours"]


def test_publish_sweeps_what_killed_publishes_left_in_staging(state_dir):
    import os
    import time

    from jobs.storage.lake import ORPHAN_AGE_S, get_lake

    lake = get_lake()
    staging = lake.path("zone") / "_staging"
    (staging / "date=2026-01-01.dead").mkdir(parents=True)
    (staging / "date=2026-01-01.dead" / "half.parquet").write_text("half")
    old = time.time() - ORPHAN_AGE_S - 60
    os.utime(staging / "date=2026-01-01.dead", (old, old))
    (staging / "date=2026-01-02.busy").mkdir()  # a publish in progress right now: left alone
    with lake.publish("zone/date=2026-01-03") as folder:
        (folder / "a.txt").write_text("new")
    assert sorted(p.name for p in staging.iterdir()) == ["date=2026-01-02.busy"]
    assert lake.list_partitions("zone") == ["2026-01-03"]


def test_republishing_swaps_in_one_atomic_step(tmp_path):
    """On Linux a partition is replaced by exchanging two folders: there is no moment without it."""
    from jobs.storage.lake import exchange_paths

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "new.txt").write_text("new")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "old.txt").write_text("old")
    assert exchange_paths(tmp_path / "a", tmp_path / "b")
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["new.txt"]
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["old.txt"]
    with pytest.raises(FileNotFoundError):
        exchange_paths(tmp_path / "missing", tmp_path / "b")
