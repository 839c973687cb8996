"""The ledger balances only when the data is right: ids unique across all of silver, records counted
from the bytes, identifiers kept exactly as delivered in every format."""

import io
import json
import shutil

import pandas as pd
import pytest
from test_ingest_validate import deliver, quarantined, run, silver

from jobs.devkit.generate import generate_day
from jobs.shared import layout
from jobs.steps.validate import CONFLICT_IN_SILVER, DUPLICATE_IN_SILVER
from jobs.storage import tables
from jobs.storage.ledger import read_ledger
from jobs.storage.raw import FileRejected, parse_raw

DAY = "2026-05-10"
NEXT = "2026-05-11"


def test_an_id_already_in_silver_under_another_date_is_quarantined_not_landed_twice(lake):
    first = generate_day(DAY, 60)
    deliver(lake, first, "day.csv", date=DAY)
    run(lake, "run1", date=DAY)
    resent = first.iloc[:5]  # yesterday's rows re-sent inside today's file: identical
    moved = first.iloc[5:8].copy()  # re-delivered with the timestamp moved across midnight: other values
    moved["timestamp"] = f"{NEXT}T00:05:00Z"
    today = pd.concat([generate_day(NEXT, 20, delivery="n"), resent, moved], ignore_index=True)
    deliver(lake, today, "day.csv", date=NEXT)
    _, result = run(lake, "run2", date=NEXT)

    rows = silver(lake)
    assert rows["transaction_id"].is_unique and len(rows) == 80
    assert set(rows.loc[rows["date"] == NEXT, "transaction_id"]).isdisjoint(first["transaction_id"])
    q = quarantined(lake)
    reasons = dict(zip(q["transaction_id"], q["_reason"], strict=True))
    assert {i: reasons[i] for i in resent["transaction_id"]} == dict.fromkeys(resent["transaction_id"],
                                                                              DUPLICATE_IN_SILVER)
    assert {i: reasons[i] for i in moved["transaction_id"]} == dict.fromkeys(moved["transaction_id"],
                                                                             CONFLICT_IN_SILVER)
    entry = [e for e in read_ledger(lake) if e["run_id"] == "run2"][0]
    assert (entry["rows_delivered"], entry["rows_silver"], entry["rows_quarantined"]) == (28, 20, 8)
    assert entry["broken_rules"] == {DUPLICATE_IN_SILVER: 5, CONFLICT_IN_SILVER: 3}
    assert result["rows_silver"] == 20
    # Every id of the index is in silver once, with the date silver has.
    index = tables.read(lake, layout.ID_INDEX)
    assert sorted(zip(index["transaction_id"], index["date"], strict=True)) == \
        sorted(zip(rows["transaction_id"], rows["date"], strict=True))


def test_a_lake_whose_silver_predates_the_index_gets_it_built_before_the_next_delivery(state_dir):
    from jobs.storage.lake import get_lake

    lake = get_lake()
    first = generate_day(DAY, 40)
    deliver(lake, first, "day.csv", date=DAY)
    run(lake, "run1", date=DAY)
    shutil.rmtree(lake.path(layout.ID_INDEX))  # as a lake written before the index existed
    lake.remove(layout.ID_INDEX_READY)
    deliver(lake, first.iloc[:4], "again.csv", date=NEXT)
    _, result = run(lake, "run2", date=NEXT)
    assert result["rows_silver"] == 0 and result["rows_quarantined"] == 4
    assert len(silver(lake)) == 40 and len(tables.read(lake, layout.ID_INDEX)) == 40


def _with_stray_quotes(frame: pd.DataFrame, rows: list[int]) -> bytes:
    lines = frame.to_csv(index=False).splitlines()
    for r in rows:  # row r is on line r + 2: the header is line 1
        fields = lines[r + 1].split(",")
        fields[4] = '"' + fields[4]  # a quote opens merchant_category and never closes
        lines[r + 1] = ",".join(fields)
    return ("\n".join(lines) + "\n").encode()


def test_a_stray_quote_never_swallows_lines_the_ledger_counts_records_from_the_bytes(lake):
    day = generate_day(DAY, 5000)
    data = _with_stray_quotes(day, [199, 3999])  # lines 201 and 4001
    assert data.count(b"\n") == 5001
    deliver(lake, data, "export.csv")
    _, result = run(lake, "run1")
    (entry,) = read_ledger(lake)
    assert entry["rows_delivered"] == 5000 and entry["status"] == "ingested"
    assert entry["rows_silver"] == 4998 and entry["rows_quarantined"] == 2
    q = quarantined(lake)
    assert sorted(q["_reason"]) == ["malformed_quoting: line 201: unexpected end of data (an unclosed quote)",
                                    "malformed_quoting: line 4001: unexpected end of data (an unclosed quote)"]
    assert sorted(q["_raw_line"]) == sorted(data.decode().splitlines()[i] for i in (200, 4000))
    assert entry["broken_rules"] == {"malformed_quoting": 2}
    assert "malformed lines quarantined: 201, 4001" in entry["detail"]
    assert set(silver(lake)["transaction_id"]) == set(day["transaction_id"]) - {
        day["transaction_id"].iloc[199], day["transaction_id"].iloc[3999]}


def test_a_json_line_that_is_not_an_object_is_quarantined_by_its_line_number(lake):
    day = generate_day(DAY, 30)
    lines = day.to_json(orient="records", lines=True).splitlines()
    lines[9] = lines[9][:-7]  # cut: not JSON
    lines.insert(20, "")  # blank lines hold no record
    deliver(lake, ("\n".join(lines) + "\n").encode(), "a.jsonl")
    _, result = run(lake, "run1")
    (entry,) = read_ledger(lake)
    assert (entry["rows_delivered"], entry["rows_silver"], entry["rows_quarantined"]) == (30, 29, 1)
    (reason,) = quarantined(lake)["_reason"]
    assert reason.startswith("malformed_json: line 10: ")


def _ids_frame():
    day = generate_day(DAY, 4)
    day["transaction_id"] = [1234567890123456789, 1234567890123456790, 1234567890123456791, 9007199254740993]
    day["merchant_id"] = [7, None, 9, 10]
    return day


def test_identifiers_are_kept_exactly_as_delivered_in_every_format():
    day = _ids_frame()
    expected = ["1234567890123456789", "1234567890123456790", "1234567890123456791", "9007199254740993"]
    records = [{**r, "transaction_id": t, "merchant_id": m}
               for r, t, m in zip(day.drop(columns=["transaction_id", "merchant_id"]).to_dict("records"),
                                  [1234567890123456789, 1234567890123456790, 1234567890123456791, 9007199254740993],
                                  [7, None, 9, 10], strict=True)]
    jsonl = "".join(json.dumps(r) + "\n" for r in records).encode()
    csv = day.astype({"merchant_id": "Int64"}).to_csv(index=False).encode()
    parquet = io.BytesIO()
    day.astype({"transaction_id": "int64", "merchant_id": "Int64", "card_id": "bytes"}).to_parquet(parquet)
    frames = {name: parse_raw(name, data) for name, data in
              [("a.csv", csv), ("a.jsonl", jsonl), ("a.parquet", parquet.getvalue())]}
    for name, frame in frames.items():
        assert frame["transaction_id"].tolist() == expected, name
        assert frame["merchant_id"].tolist() == ["7", None, "9", "10"], name
        assert frame["card_id"].tolist() == day["card_id"].tolist(), name  # Parquet BINARY: the text, not b'...'
    assert frames["a.csv"].equals(frames["a.jsonl"])


def test_a_float_typed_identifier_column_rejects_the_file_with_its_reason(lake):
    day = generate_day(DAY, 10)
    day["customer_id"] = [float(i) for i in range(10)]
    data = io.BytesIO()
    day.to_parquet(data)
    with pytest.raises(FileRejected, match="float_id_column: column customer_id is typed double"):
        parse_raw("a.parquet", data.getvalue())


def test_a_line_with_too_many_fields_is_quarantined_by_its_line_number(lake):
    lines = generate_day(DAY, 50).to_csv(index=False).splitlines()
    lines[30] += ",an,extra,field"  # line 31
    deliver(lake, ("\n".join(lines) + "\n").encode(), "a.csv")
    run(lake, "run1")
    (reason,) = quarantined(lake)["_reason"]
    assert reason == "malformed_row: line 31: the line has 14 fields, the header 11"
    (entry,) = read_ledger(lake)
    assert entry["broken_rules"] == {"malformed_row": 1} and "malformed lines quarantined: 31" in entry["detail"]
