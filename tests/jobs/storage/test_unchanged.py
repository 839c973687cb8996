"""Skip-or-run-and-remember (``unchanged.once``), the one way every step skips unchanged work."""

from __future__ import annotations

from jobs.storage import unchanged
from jobs.storage.lake import get_lake


def _lake(tmp_path):
    return get_lake((tmp_path / "lake").as_uri())


def test_the_same_inputs_skip_other_inputs_run_and_force_runs(tmp_path):
    lake, calls = _lake(tmp_path), []

    def work():
        calls.append(1)
        return {"rows": len(calls)}

    first = unchanged.once(lake, "score", "2026-03-01", {"gold": "a"}, work, run_id="run-1")
    again = unchanged.once(lake, "score", "2026-03-01", {"gold": "a"}, work, run_id="run-2")
    assert first == {"rows": 1} and again["skipped"] and again["rows"] == 1 and again["unchanged_since"] == "run-1"
    changed = unchanged.once(lake, "score", "2026-03-01", {"gold": "b"}, work, run_id="run-3")
    forced = unchanged.once(lake, "score", "2026-03-01", {"gold": "b"}, work, run_id="run-4", force=True)
    assert (changed, forced) == ({"rows": 2}, {"rows": 3}) and len(calls) == 3


def test_a_record_stands_only_while_its_outputs_are_what_it_published(tmp_path):
    lake, published = _lake(tmp_path), {"files": ["part-0"]}

    def work():
        return {"version": 1}

    unchanged.once(lake, "features", "d", {"silver": 1}, work, outputs=lambda result: dict(published))
    assert unchanged.once(lake, "features", "d", {"silver": 1}, work, outputs=lambda result: dict(published))["skipped"]
    published["files"] = ["part-9"]  # someone rebuilt the partition since
    assert "skipped" not in unchanged.once(lake, "features", "d", {"silver": 1}, work,
                                           outputs=lambda result: dict(published))


def test_a_range_records_its_days_and_a_gone_result_is_not_taken_for_done(tmp_path):
    lake = _lake(tmp_path)

    def days(result):
        for day in ("d1", "d2"):
            yield day, {"day": day}, {**result, "dates": [day]}, None

    unchanged.once(lake, "score", "d1..d2", {"range": True}, lambda: {"dates": ["d1", "d2"]}, parts=days)
    assert unchanged.once(lake, "score", "d2", {"day": "d2"}, lambda: {"ran": True})["dates"] == ["d2"]
    ran = unchanged.once(lake, "score", "d1..d2", {"range": True}, lambda: {"ran": True},
                         still_valid=lambda result: False)  # e.g. the model version it names was deleted
    assert ran == {"ran": True}


def test_a_process_that_does_not_record_still_decides_like_the_others(tmp_path):
    lake = _lake(tmp_path)
    assert unchanged.once(lake, "train", "d", {"x": 1}, lambda: {"rank": 1}, record=False) == {"rank": 1}
    assert unchanged.previous(lake, "train", "d", {"x": 1}) is None  # nothing recorded by rank 1
    unchanged.once(lake, "train", "d", {"x": 1}, lambda: {"model_version": "3"})
    assert unchanged.once(lake, "train", "d", {"x": 1}, lambda: {"rank": 1}, record=False)["skipped"]
