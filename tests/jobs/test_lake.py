import pytest

from jobs.lake import Lake, LakeError


def test_publish_swaps_whole_partition(lake):
    with lake.publish("zone/date=2026-01-01") as folder:
        (folder / "a.txt").write_text("first")
    with lake.publish("zone/date=2026-01-01") as folder:
        (folder / "b.txt").write_text("second")
    assert lake.list("zone") == ["zone/date=2026-01-01/b.txt"]
    assert lake.list_partitions("zone") == ["2026-01-01"]


def test_failed_publish_keeps_old_partition_and_leaves_no_staging(lake):
    with lake.publish("zone/date=2026-01-01") as folder:
        (folder / "a.txt").write_text("good")
    with pytest.raises(RuntimeError):
        with lake.publish("zone/date=2026-01-01") as folder:
            (folder / "half.txt").write_text("half")
            raise RuntimeError("killed mid-write")
    assert lake.list("zone") == ["zone/date=2026-01-01/a.txt"]
    assert not (lake.path("zone") / "_staging").exists()


def test_unsupported_scheme_is_a_clear_error():
    with pytest.raises(LakeError, match="scheme 'gs' is not supported"):
        Lake("gs://bucket/lake")


def test_missing_object_names_its_uri(lake):
    with pytest.raises(LakeError, match="raw/nothing.csv does not exist"):
        lake.read_bytes("raw/nothing.csv")
