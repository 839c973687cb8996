"""Ingestion: new raw objects -> a typed-as-delivered bronze batch, file-level rejects quarantined.

Raw objects are never modified. Each object is identified by key + SHA-256 of its bytes; an
object already in the ledger is skipped, so re-running ingestion ingests nothing twice.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from jobs import lake as lk
from jobs import layout
from jobs.generate import RAW_COLUMNS

log = logging.getLogger(__name__)

BATCH_MANIFEST = "_batch.json"  # what a bronze batch holds, object by object
SOURCE_COLUMNS = ["_source_key", "_source_sha256", "_source_row"]
UTF8_BOM = b"\xef\xbb\xbf"


class FileRejected(Exception):
    """A whole raw object is unusable; the message is the reason recorded in quarantine."""

    def __init__(self, rule: str, detail: str):
        super().__init__(f"{rule}: {detail}")
        self.rule = rule
        self.detail = detail


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def key_date(key: str) -> str | None:
    """The ``date=YYYY-MM-DD`` partition a raw key was delivered under, if any."""
    d = layout.partition_date(key)
    return d.isoformat() if d else None


GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"
RAW_LINE = "_raw_line"  # the as-delivered text of a CSV line that did not have the header's fields
MALFORMED = "_malformed"  # why such a line cannot be read as a row (null for every good line)
BRONZE_EXTRA = [RAW_LINE, MALFORMED]
MAX_MALFORMED_LINES = 10_000  # more than this many malformed lines: the file, not the rows, is broken
DEFAULT_BATCH_ROWS = 125_000
# Identifier columns: kept as the exact text delivered; a float type cannot hold every id exactly.
ID_COLUMNS = ["transaction_id", "card_id", "customer_id", "merchant_id"]
QUOTING_RULE = "malformed_quoting"  # a CSV line whose quotes do not close on the line
JSON_RULE = "malformed_json"  # a JSON line that is not one JSON object
MAX_NAMED_LINES = 20  # line numbers named in a reason or a ledger detail; the rest are counted
SCAN_CHUNK = 16 << 20


@dataclass
class LineScan:
    """What the raw bytes say, before any parser: how many records, and which lines are broken.

    ``records`` counts the non-empty lines after the header (CSV) or the non-blank lines (JSON
    lines): a record is a line, since no contract value may hold a line break. ``broken`` maps
    the physical line number (1-based, the header is line 1) of each CSV line whose quoting does
    not close on that line to why; such a line would swallow the lines after it into one value.
    """

    records: int = 0
    broken: dict[int, tuple[str, str]] = field(default_factory=dict)  # line -> (text, why)


def _quoting_error(text: str) -> str | None:
    """Why one CSV line's quotes are malformed (unclosed, or text after a closing quote), else None."""
    import csv

    try:
        list(csv.reader([text], strict=True))
    except csv.Error as exc:
        why = str(exc)
        return f"{why} (an unclosed quote)" if why == "unexpected end of data" else why
    return None


def scan_lines(path: Path, csv_quotes: bool, chunk: int = SCAN_CHUNK) -> LineScan:
    """Count the records of a CSV (``csv_quotes``) or JSON-lines file from its bytes, in bounded memory.

    Vectorised over chunks of ``chunk`` bytes (numpy): only lines that hold a quote character
    are looked at one by one, with Python's strict CSV reader (the common file has none).
    """
    import numpy as np

    scan = LineScan()
    carry = b""
    lines_before = 0  # physical lines in the chunks already scanned
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            data = carry + block
            if not data:
                break
            if block:
                cut = data.rfind(b"\n")
                if cut < 0:
                    carry = data
                    continue
                data, carry = data[:cut + 1], data[cut + 1:]
            else:
                carry = b""
            if lines_before == 0:
                data = data.removeprefix(UTF8_BOM)
            arr = np.frombuffer(data, dtype=np.uint8)
            ends = np.flatnonzero(arr == 10)
            if not data.endswith(b"\n"):
                ends = np.append(ends, len(arr))
            starts = np.concatenate(([0], ends[:-1] + 1))
            lengths = ends - starts
            empty = (lengths == 0) | ((lengths == 1) & (arr[np.minimum(starts, len(arr) - 1)] == 13))
            if not csv_quotes:  # JSON lines: whitespace-only lines hold no record either
                for i in np.flatnonzero(~empty & (lengths < 16)):
                    empty[i] = not data[starts[i]:ends[i]].strip()
            numbers = np.arange(lines_before + 1, lines_before + 1 + len(ends))
            counted = ~empty & (numbers > 1) if csv_quotes else ~empty  # a CSV's line 1 is its header
            scan.records += int(np.count_nonzero(counted))
            if csv_quotes:
                quoted = np.unique(np.searchsorted(ends, np.flatnonzero(arr == 34)))
                for i in quoted[numbers[quoted] > 1]:
                    text = data[starts[i]:ends[i]].rstrip(b"\r").decode("utf-8", errors="replace")
                    why = _quoting_error(text)
                    if why is not None:
                        scan.broken[int(numbers[i])] = (text, why)
            lines_before += len(ends)
            if not block:
                break
    return scan


def named_lines(lines: list[int]) -> str:
    shown = ", ".join(str(n) for n in lines[:MAX_NAMED_LINES])
    return shown + (f" and {len(lines) - MAX_NAMED_LINES:,} more" if len(lines) > MAX_NAMED_LINES else "")


def _without_lines(path: Path, dest: Path, lines: set[int]) -> None:
    """A copy of a text file without the given physical lines (1-based)."""
    with open(path, "rb") as src, open(dest, "wb") as out:
        for n, line in enumerate(src, start=1):
            if n not in lines:
                out.write(line)


def detect_format(name: str, head: bytes, tail: bytes = b"") -> str:
    """``parquet``, ``jsonl`` or ``csv`` from the (decompressed) content, the name as a tie-breaker.

    ``head`` is the first bytes of the content, ``tail`` its last four. Content wins over the
    name: Parquet by its magic bytes, JSON lines by a leading ``{`` (after an optional UTF-8
    byte-order mark); a file named ``.parquet`` that lacks the magic bytes is a truncated or
    foreign file.
    """
    if head[:4] == PARQUET_MAGIC:
        if tail[-4:] != PARQUET_MAGIC:
            raise FileRejected("truncated", "Parquet data without its footer (the upload was cut short?)")
        return "parquet"
    if name.endswith(".parquet"):
        raise FileRejected("unparseable", "named .parquet but the content is not Parquet")
    first = head.removeprefix(UTF8_BOM).lstrip()[:1]
    if first == b"{":
        return "jsonl"
    if name.endswith(".csv") or b"," in head[:4096].split(b"\n", 1)[0]:
        return "csv"
    raise FileRejected("unknown_format", f"cannot tell the format of {name!r} from its name or content")


def _arrow_strings(name: str, column):
    """One typed Parquet column as the text of its values, by Arrow's own casts (exact for integers,
    UTF-8 checked for binary, ISO text for timestamps); a float-typed identifier column is refused."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = column.type
    if pa.types.is_dictionary(kind):
        column, kind = column.cast(kind.value_type), kind.value_type
    if name in ID_COLUMNS and (pa.types.is_floating(kind) or pa.types.is_decimal(kind)):
        raise FileRejected("float_id_column", f"column {name} is typed {kind} in the Parquet schema: an identifier "
                                              "must be a string or an integer (a float cannot hold every id exactly)")
    if pa.types.is_nested(kind):
        raise FileRejected("unsupported_type", f"column {name} is typed {kind}: a contract column holds one value")
    try:
        return pc.cast(column, pa.string())
    except pa.ArrowInvalid as exc:
        if "UTF8" in str(exc) or "utf8" in str(exc).lower():
            raise FileRejected("not_utf8", f"column {name} holds bytes that are not valid UTF-8") from exc
        raise FileRejected("unsupported_type", f"column {name} ({kind}) has no text form: {exc}") from exc


def check_header(columns: list[str]) -> None:
    """A header must name every column once, with a readable name: else the file is unusable."""
    names = [str(c) for c in columns]
    blank = [i + 1 for i, c in enumerate(names) if not c.strip()]
    if blank:
        raise FileRejected("unreadable_header", f"header column(s) {blank} have no name (header: {names[:20]})")
    repeated = sorted({c for c in names if names.count(c) > 1})
    if repeated:
        raise FileRejected("duplicate_columns", f"the header names {repeated} more than once; which copy holds "
                                                "the value cannot be decided")


def _check_columns(columns: list[str]) -> list[str]:
    """Reject a file without every contract column; the extra columns (ignored) it has."""
    missing = [c for c in RAW_COLUMNS if c not in columns]
    if missing:
        raise FileRejected("missing_columns", f"columns {missing} are missing (has {list(columns)})")
    return [str(c) for c in columns if c not in RAW_COLUMNS]


def _csv_fields(line: str) -> list[str]:
    import csv

    try:
        return next(csv.reader(io.StringIO(line)), [])
    except csv.Error:
        return [line]


def _json_text(value) -> str | None:
    """A parsed JSON value as text: strings as they are, numbers as written, the rest as JSON."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _json_object(pairs: list) -> dict:
    """One JSON object with its values as text; a key named twice rejects the file (parsers keep the last)."""
    check_header([k for k, _ in pairs])
    return {k: _json_text(v) for k, v in pairs}


def gunzip_file(source: Path, dest: Path, limit: int, chunk: int = 1 << 20) -> None:
    """Decompress a gzip file (every member) into ``dest`` as a stream, refusing more than ``limit`` bytes.

    A small compressed object can expand a thousandfold (a gzip bomb): the output is produced in
    bounded steps and the object rejected as soon as it passes the limit, before memory or disk
    runs out. Memory stays at a few chunks, whatever the sizes.
    """
    size = 0

    def emit(piece: bytes) -> None:
        nonlocal size
        size += len(piece)
        if size > limit:
            raise FileRejected("too_large", f"decompresses to more than {limit:,} bytes (the limit, "
                                            "PIPELINE_MAX_DECOMPRESSED_MB); a gzip bomb or an export to split")
        out.write(piece)

    try:
        with open(source, "rb") as src, open(dest, "wb") as out:
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            buf = b""
            while True:
                if not buf:
                    buf = src.read(chunk)
                    if not buf:
                        break
                if inflater.eof:  # the next member: concatenated gzip files are one stream
                    buf = buf.lstrip(b"\x00")  # padding between members
                    if not buf:
                        continue
                    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
                emit(inflater.decompress(buf, chunk))
                while inflater.unconsumed_tail and not inflater.eof:  # output-bounded steps
                    emit(inflater.decompress(inflater.unconsumed_tail, chunk))
                buf = inflater.unused_data if inflater.eof else b""
            if not inflater.eof:
                raise FileRejected("corrupt_gzip", "the gzip stream ends before its end marker (truncated upload?)")
    except zlib.error as exc:
        raise FileRejected("corrupt_gzip", str(exc)) from exc


DEFAULT_MAX_DECOMPRESSED = 1024 << 20


@dataclass
class _BrokenLine:
    """A CSV line kept out of the parse (its quoting is malformed), quarantined as delivered."""

    text: str
    why: str


class RawFile:
    """One delivered object, read as a stream of Arrow record batches of strings, exactly as delivered.

    CSV, JSON lines or Parquet, optionally gzip-compressed, with or without a UTF-8 byte-order
    mark, detected from the content (see :func:`detect_format`). Memory is bounded by
    ``batch_rows``, whatever the file's size: CSV is parsed by Arrow's streaming reader, JSON lines
    and Parquet chunk by chunk. Each batch holds the contract columns as strings, plus
    ``_raw_line`` and ``_malformed`` for a CSV line whose field count is not the header's (a short
    line becomes a row with nulls, as pandas reads it; a long one is kept as a malformed row).
    Rows are numbered in the order they are yielded; malformed lines come last.

    Raises :class:`FileRejected` (while opening or while streaming) for anything that makes the
    whole file unusable: unreadable or repeated column names, missing contract columns, no rows,
    invalid UTF-8, an unparseable body. Extra columns are dropped and named in ``extra_columns``.
    """

    def __init__(self, name: str, path: Path, max_decompressed: int = DEFAULT_MAX_DECOMPRESSED,
                 batch_rows: int = DEFAULT_BATCH_ROWS):
        self.name = name.rsplit("/", 1)[-1].lower()
        self.batch_rows = batch_rows
        self.extra_columns: list[str] = []
        self.rows = 0
        self.scan: LineScan | None = None  # the records counted from the bytes (CSV, JSON lines)
        self.broken_lines: list[int] = []  # lines quarantined as malformed (quoting, JSON)
        self._tmp = None
        self._tmp_copy = None
        with open(path, "rb") as f:
            magic = f.read(2)
        if magic == GZIP_MAGIC:
            self._tmp = tempfile.TemporaryDirectory(prefix="raw-gunzip-")
            plain = Path(self._tmp.name) / "content"
            gunzip_file(path, plain, max_decompressed)
            path = plain
        elif self.name.endswith(".gz"):
            raise FileRejected("corrupt_gzip", "named .gz but the content is not gzip data")
        self.name = self.name.removesuffix(".gz")
        self.path = path
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(1 << 16)
            f.seek(max(size - 4, 0))
            tail = f.read(4)
        if not head.removeprefix(UTF8_BOM).strip() and size <= len(head):
            raise FileRejected("empty_file", "the object holds no rows")
        self.format = detect_format(self.name, head, tail)
        self._head = head

    def close(self) -> None:
        for tmp in (self._tmp, self._tmp_copy):
            if tmp is not None:
                tmp.cleanup()
        self._tmp = self._tmp_copy = None

    def __enter__(self) -> RawFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def batches(self) -> Iterator:
        """The file's rows as ``pyarrow.Table`` batches (contract columns + ``_raw_line``, ``_malformed``)."""
        reader = {"parquet": self._parquet, "jsonl": self._jsonl, "csv": self._csv}[self.format]
        try:
            for batch in reader():
                self.rows += batch.num_rows
                yield batch
        except FileRejected:
            raise
        except UnicodeDecodeError as exc:
            raise FileRejected("not_utf8", f"byte {exc.start} of a line is not valid UTF-8") from exc
        except Exception as exc:  # any parser error makes the file unusable
            message = f"{type(exc).__name__}: {exc}".splitlines()[0]
            if "invalid UTF8" in message or "UTF-8" in message:
                raise FileRejected("not_utf8", message) from exc
            raise FileRejected("unparseable", message) from exc
        if self.rows == 0:
            raise FileRejected("empty_file", "the object holds a header but no rows")
        if self.scan is not None and self.rows != self.scan.records:  # accounting against the bytes
            raise FileRejected("record_count_mismatch", f"the bytes hold {self.scan.records:,} records (non-empty "
                                                        f"lines{' after the header' if self.format == 'csv' else ''}) "
                                                        f"but {self.rows:,} rows were parsed")

    @staticmethod
    def _table(frame: pd.DataFrame, raw_line=None, malformed=None):
        import pyarrow as pa

        n = len(frame)
        columns = {c: pa.array(frame[c].tolist() if c in frame.columns else [None] * n, pa.string())
                   for c in RAW_COLUMNS}
        columns[RAW_LINE] = pa.array(raw_line if raw_line is not None else [None] * n, pa.string())
        columns[MALFORMED] = pa.array(malformed if malformed is not None else [None] * n, pa.string())
        return pa.table(columns)

    def _parquet(self):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(self.path)
        except Exception as exc:
            raise FileRejected("unparseable", f"{type(exc).__name__}: {exc}".splitlines()[0]) from exc
        check_header(pf.schema_arrow.names)
        if pf.metadata.num_rows == 0:
            raise FileRejected("empty_file", "the object holds a header but no rows")
        self.extra_columns = _check_columns(pf.schema_arrow.names)
        for name in ID_COLUMNS:  # refused before a row is read
            _arrow_strings(name, pa.array([], pf.schema_arrow.field(name).type))
        for batch in pf.iter_batches(batch_size=self.batch_rows, columns=RAW_COLUMNS):
            n = batch.num_rows
            columns = {c: _arrow_strings(c, batch.column(c)) for c in RAW_COLUMNS}
            columns[RAW_LINE] = pa.nulls(n, pa.string())
            columns[MALFORMED] = pa.nulls(n, pa.string())
            yield pa.table(columns)

    def _jsonl(self):
        """JSON lines, one object a line, each value kept as its JSON text (numbers exactly as written)."""
        self.scan = scan_lines(self.path, csv_quotes=False)
        columns: set[str] = set()
        records: list[dict] = []
        malformed: list[tuple[int, str, str]] = []
        seen_object = False
        with open(self.path, "rb") as f:
            for number, raw_line in enumerate(f, start=1):
                line = raw_line.decode("utf-8")  # invalid UTF-8: the file is rejected (not_utf8)
                if number == 1:
                    line = line.removeprefix("\ufeff")
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line, object_pairs_hook=_json_object, parse_int=str, parse_float=str,
                                     parse_constant=str)
                    if not isinstance(obj, dict):
                        raise ValueError(f"a JSON {type(obj).__name__}, not an object")
                except FileRejected:
                    raise
                except ValueError as exc:
                    if not seen_object and not malformed:
                        raise FileRejected("unreadable_header", f"the first JSON line is not an object ({exc})"
                                           ) from None
                    malformed.append((number, line.rstrip("\r\n"), f"{JSON_RULE}: line {number}: {exc}"))
                    if len(malformed) > MAX_MALFORMED_LINES:
                        raise FileRejected("unparseable", f"more than {MAX_MALFORMED_LINES:,} lines are not JSON "
                                                          f"objects (first: line {malformed[0][0]})") from None
                    continue
                seen_object = True
                columns.update(obj)
                records.append(obj)
                if len(records) >= self.batch_rows:
                    yield self._json_rows(records)
                    records = []
        if records:
            yield self._json_rows(records)
        if seen_object:
            self.extra_columns = _check_columns(sorted(columns, key=lambda c: (c not in RAW_COLUMNS, c)))
        if malformed:
            self.broken_lines = [n for n, _, _ in malformed]
            yield self._table(pd.DataFrame({c: [None] * len(malformed) for c in RAW_COLUMNS}),
                              [t for _, t, _ in malformed], [w for _, _, w in malformed])

    def _json_rows(self, records: list[dict]):
        import pyarrow as pa

        columns = {c: pa.array([r.get(c) for r in records], pa.string()) for c in RAW_COLUMNS}
        n = len(records)
        columns[RAW_LINE] = pa.nulls(n, pa.string())
        columns[MALFORMED] = pa.nulls(n, pa.string())
        return pa.table(columns)

    def _csv(self):
        import codecs
        import csv

        import pyarrow as pa
        import pyarrow.csv as pcsv

        try:  # the head as a whole first (the rest is checked by the parser as it streams)
            codecs.getincrementaldecoder("utf-8")().decode(self._head, final=False)
        except UnicodeDecodeError as exc:
            raise FileRejected("not_utf8", f"byte {exc.start} is not valid UTF-8") from exc
        first = self._head.removeprefix(UTF8_BOM).split(b"\n", 1)[0].rstrip(b"\r")
        try:
            header = next(csv.reader([first.decode("utf-8")]))
        except UnicodeDecodeError as exc:
            raise FileRejected("not_utf8", f"byte {exc.start} of the header is not valid UTF-8") from exc
        except Exception as exc:
            raise FileRejected("unreadable_header", f"the first line is not a CSV header ({exc})") from exc
        check_header(header)
        if not self._has_data_line():
            raise FileRejected("empty_file", "the object holds a header but no rows")
        self.extra_columns = _check_columns(header)
        self.scan = scan_lines(self.path, csv_quotes=True)
        broken = self.scan.broken
        if len(broken) > MAX_MALFORMED_LINES:
            raise FileRejected("unparseable", f"{len(broken):,} lines have quotes that do not close on the line "
                                              f"(lines {named_lines(sorted(broken))})")
        source = self.path
        if broken:  # parsed without them: an unclosed quote would swallow the lines after it
            self._tmp_copy = tempfile.TemporaryDirectory(prefix="raw-lines-")
            source = Path(self._tmp_copy.name) / "content"
            _without_lines(self.path, source, set(broken))
            self.broken_lines = sorted(broken)
            log.warning("%s: %d line(s) with malformed quoting are quarantined one by one: lines %s", self.name,
                        len(broken), named_lines(self.broken_lines))
        invalid: list = []

        def keep_invalid(row) -> str:
            invalid.append(row)
            if len(invalid) > MAX_MALFORMED_LINES:
                return "error"
            return "skip"

        # Rows hold one parsed block: about batch_rows rows of this file's average line length.
        line_bytes = max(16, len(first) + 1)
        block = min(64 << 20, max(1 << 20, line_bytes * 2 * self.batch_rows))
        reader = pcsv.open_csv(
            source,
            read_options=pcsv.ReadOptions(block_size=block, use_threads=True),
            parse_options=pcsv.ParseOptions(newlines_in_values=True, invalid_row_handler=keep_invalid),
            convert_options=pcsv.ConvertOptions(column_types={c: pa.string() for c in header},
                                                include_columns=RAW_COLUMNS, strings_can_be_null=True,
                                                null_values=[""], quoted_strings_can_be_null=True),
        )
        try:
            for batch in reader:
                if batch.num_rows:
                    yield self._with_extras(pa.Table.from_batches([batch]))
        except pa.ArrowInvalid:
            if len(invalid) > MAX_MALFORMED_LINES:
                raise FileRejected("unparseable", f"more than {MAX_MALFORMED_LINES:,} lines do not have the "
                                                  f"header's {len(header)} fields (first: {invalid[0].text[:200]!r})"
                                   ) from None
            raise
        if invalid:
            yield self._invalid_rows(header, invalid)
        if broken:
            lines = sorted(broken)
            yield self._invalid_rows(header, [_BrokenLine(broken[n][0], f"{QUOTING_RULE}: line {n}: {broken[n][1]}")
                                              for n in lines])

    def _line_numbers(self, texts: list[str]) -> dict[str, list[int]]:
        """Where the parser's malformed lines are in the delivered file (it does not say, when threaded)."""
        return _lines_of(self.path, texts)

    def _has_data_line(self) -> bool:
        with open(self.path, "rb") as f:
            f.readline()
            return any(line.strip() for line in f)

    def _with_extras(self, table):
        import pyarrow as pa

        n = table.num_rows
        return table.select(RAW_COLUMNS).append_column(RAW_LINE, pa.nulls(n, pa.string())) \
            .append_column(MALFORMED, pa.nulls(n, pa.string()))

    def _invalid_rows(self, header: list[str], invalid: list):
        """CSV lines without the header's field count: short ones padded with nulls, long ones malformed."""
        records, text, why = [], [], []
        lines = self._line_numbers([row.text for row in invalid if not isinstance(row, _BrokenLine)
                                    and row.actual_columns > row.expected_columns])
        for row in invalid:
            fields = _csv_fields(row.text)
            values = dict(zip(header, fields, strict=False))
            records.append({c: (values.get(c) or None) for c in RAW_COLUMNS})
            text.append(row.text)
            if isinstance(row, _BrokenLine):
                why.append(row.why)
            elif row.actual_columns < row.expected_columns:
                why.append(None)  # read as a row with nulls: the contract's not-null rules name it
            else:
                number = lines.get(row.text, [None]).pop(0) if lines.get(row.text) else None
                if number is not None:
                    self.broken_lines.append(number)
                where = f"line {number}: " if number is not None else ""
                why.append(f"malformed_row: {where}the line has {row.actual_columns} fields, the header "
                           f"{row.expected_columns}")
        self.broken_lines.sort()
        return self._table(pd.DataFrame.from_records(records, columns=RAW_COLUMNS), text, why)


def _lines_of(path: Path, texts: list[str]) -> dict[str, list[int]]:
    """The physical line numbers (1-based) of lines whose text is one of ``texts``, in file order."""
    wanted = set(texts)
    found: dict[str, list[int]] = {}
    if not wanted:
        return found
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            line = raw.rstrip(b"\r\n").decode("utf-8", errors="replace").removeprefix("\ufeff")
            if line in wanted:
                found.setdefault(line, []).append(number)
    return found


def parse_raw(key: str, data: bytes, max_decompressed: int = DEFAULT_MAX_DECOMPRESSED) -> pd.DataFrame:
    """Parse one delivered object held in memory into a frame of strings (see :class:`RawFile`)."""
    import pyarrow as pa

    with tempfile.TemporaryDirectory(prefix="raw-") as tmp:
        path = Path(tmp) / "object"
        path.write_bytes(data)
        with RawFile(key, path, max_decompressed) as raw:
            batches = list(raw.batches())
            frame = pa.concat_tables(batches).to_pandas()
            frame = frame[RAW_COLUMNS].astype(object).where(frame[RAW_COLUMNS].notna(), None)
            frame.attrs["extra_columns"] = raw.extra_columns
            return frame


LEDGER_COLUMNS = ["key", "sha256", "status", "rows_delivered", "rows_silver", "rows_quarantined",
                  "broken_rules", "detail", "run_id", "ingested_at", "silver_version", "size", "tag"]


def read_ledger(lake: lk.Lake) -> list[dict]:
    """Every ledger entry (one per ingested object: key + content), oldest first.

    ``broken_rules`` comes back as a dict. A storage error raises: an unreadable ledger is never
    taken for an empty one (which would re-ingest the whole raw history).
    """
    from jobs import tables

    frame = tables.read(lake, layout.LEDGER)
    if frame.empty:
        return []
    frame = frame.sort_values(["ingested_at", "key"], kind="stable")
    entries = []
    for row in frame.to_dict("records"):
        row["broken_rules"] = json.loads(row.get("broken_rules") or "{}")
        for k in ("rows_delivered", "rows_silver", "rows_quarantined", "silver_version", "size"):
            if row.get(k) is not None and row[k] == row[k]:
                row[k] = int(row[k])
        entries.append(row)
    return entries


def record_in_ledger(lake: lk.Lake, entries: list[dict]) -> None:
    """Add entries to the ledger; an object (key + sha256) already there keeps its entry (idempotent)."""
    import pyarrow as pa

    from jobs import tables

    if not entries:
        return
    schema = pa.schema([("key", pa.string()), ("sha256", pa.string()), ("status", pa.string()),
                        ("rows_delivered", pa.int64()), ("rows_silver", pa.int64()),
                        ("rows_quarantined", pa.int64()), ("broken_rules", pa.string()), ("detail", pa.string()),
                        ("run_id", pa.string()), ("ingested_at", pa.string()), ("silver_version", pa.int64()),
                        ("size", pa.int64()), ("tag", pa.string())])
    rows = [{**{c: e.get(c) for c in LEDGER_COLUMNS},
             "broken_rules": json.dumps(e.get("broken_rules") or {}, sort_keys=True)} for e in entries]
    tables.merge_new_rows(lake, layout.LEDGER, pa.Table.from_pylist(rows, schema=schema), keys=["key", "sha256"],
                          metadata={"step": "ledger", "run_id": entries[0]["run_id"]})


def in_ledger(lake: lk.Lake, key: str, digest: str) -> bool:
    from jobs import tables

    found = tables.read(lake, layout.LEDGER, columns=["key"],
                        filters=[("key", "=", key), ("sha256", "=", digest)])
    return not found.empty


def claim(lake: lk.Lake, key: str, digest: str, run_id: str, ttl_hours: float) -> str | None:
    """Take the exclusive claim on one delivered object (key + content) for ``run_id``.

    Returns None when this run holds the claim (new, or a retry of the same run), else the run
    that holds it. The claim is created with a create-only write (``O_EXCL`` link locally,
    ``If-None-Match: *`` on S3), so two overlapping runs can never both take it. A claim older
    than ``ttl_hours`` whose run never finished is taken over by compare-and-set (the claim is
    replaced only if it is still the stale one just read), so two runs cannot both take it over.
    """
    ckey = layout.claim(key, digest)
    now = datetime.now(UTC)
    payload = json.dumps({"key": key, "sha256": digest, "run_id": run_id, "claimed_at": now.isoformat()}).encode()
    for _ in range(3):
        if lake.create_only(ckey, payload):
            return None
        try:
            raw = lake.read_bytes(ckey)
        except lk.ObjectMissing:
            continue  # released between our two calls: try to create it again
        held = json.loads(raw)
        if held["run_id"] == run_id:
            return None
        age_h = (now - datetime.fromisoformat(held["claimed_at"])).total_seconds() / 3600
        if age_h <= ttl_hours:
            return held["run_id"]
        if lake.replace_if_unchanged(ckey, raw, payload):
            log.warning("took over the claim of run %s on %s (%.1f h old, TTL %.1f h)", held["run_id"], key, age_h,
                        ttl_hours)
            return None
        # someone else replaced it first: read who holds it now
    held = lake.read_json(ckey)
    return None if held["run_id"] == run_id else held["run_id"]


def pending_objects(lake: lk.Lake, date: str, not_after: datetime | None = None) -> list[lk.ObjectInfo]:
    """Raw objects delivered for ``date`` or earlier that the ledger has not seen.

    With ``not_after`` (now plus the allowed clock skew), objects under a ``date=`` partition
    later than that are pending too: they are refused, not left waiting for a day to come.

    Decided from the listing alone: an object whose key, size and version tag (S3 ETag, file
    mtime) match a ledger entry was ingested and is never downloaded again, so a run that finds
    nothing new costs one listing and one ledger read, however many objects were ever delivered.
    """
    known = {(e["key"], e.get("size"), e.get("tag")) for e in read_ledger(lake)}
    pending = []
    markers = 0
    for info in lake.list_objects(layout.RAW_TRANSACTIONS):
        if layout.is_marker(info.key):
            markers += 1
            continue
        d = key_date(info.key)
        if d is not None and d > date and not (not_after is not None and d > not_after.date().isoformat()):
            continue
        if (info.key, info.size, info.tag) not in known:
            pending.append(info)
    if markers:
        log.info("skipped %d marker, checksum or folder-placeholder object(s) (_SUCCESS, .crc, .../): not deliveries",
                 markers)
    return pending


def ingest(lake: lk.Lake, date: str, run_id: str, claim_ttl_hours: float = 24.0,
           max_object_bytes: int = 256 << 20, max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED,
           batch_rows: int = DEFAULT_BATCH_ROWS, not_after: datetime | None = None,
           max_read_attempts: int = 3) -> dict:
    """Stage every pending raw object as a bronze batch; quarantine unusable files whole.

    Each new object is downloaded once as a stream (hashed on the way) into a local file and
    parsed from it in record batches of ``batch_rows``, so memory stays bounded whatever the
    object's size. Each object is claimed first: one claimed by another, still running ingestion
    is skipped; after claiming, the ledger is read again, so an object another run finished
    meanwhile is skipped too. An object larger than ``max_object_bytes`` (from the listing) is
    rejected whole without being copied: it is hashed as a stream and stays in raw, with its
    reason in quarantine. An object the store refuses to read is left for the next run, the
    others go on; after ``max_read_attempts`` runs it is rejected with the store's answer
    (:func:`_unreadable`). Listing and ledger errors still fail the run.
    """
    import time

    batch_key = layout.bronze_batch(run_id)
    pending = pending_objects(lake, date, not_after)
    log.info("%d new object(s) in %s up to %s", len(pending), lake.uri_of(layout.RAW_TRANSACTIONS), date)
    manifest = {"run_id": run_id, "date": date, "objects": []}
    held_elsewhere, deferred = [], []
    failed_before = set(lake.list(layout.UNREADABLE)) if pending else set()
    with lake.publish(batch_key) as folder, tempfile.TemporaryDirectory(prefix="ingest-") as tmp:
        for n, info in enumerate(pending):
            key = info.key
            started = time.perf_counter()
            oversized = info.size > max_object_bytes
            local = Path(tmp) / f"object-{n:05d}"
            try:
                digest = lake.stream_sha256(key) if oversized else lake.download(key, local)
            except lk.StorageUnavailable as exc:
                entry = _unreadable(lake, info, exc, max_read_attempts, run_id)
                if entry is None:
                    deferred.append({"key": key, "error": str(exc)})
                else:
                    manifest["objects"].append(entry)
                continue
            if layout.read_attempts(key, info.tag) in failed_before:  # read at last: its failures are history
                lake.remove(layout.read_attempts(key, info.tag))
            holder = claim(lake, key, digest, run_id, claim_ttl_hours)
            if holder is not None:
                log.info("skipping %s: run %s is ingesting it", lake.uri_of(key), holder)
                held_elsewhere.append({"key": key, "run_id": holder})
                local.unlink(missing_ok=True)
                continue
            if in_ledger(lake, key, digest):
                log.info("skipping %s: its content is already in the ledger (another run ingested it meanwhile, "
                         "or it was rewritten unchanged)", lake.uri_of(key))
                local.unlink(missing_ok=True)
                continue
            entry = {"key": key, "sha256": digest, "bytes": info.size, "size": info.size, "tag": info.tag,
                     "delivery_date": key_date(key) or date}
            part = f"part-{n:05d}.parquet"
            future = not_after is not None and (key_date(key) or "") > not_after.date().isoformat()
            try:
                if future:
                    raise FileRejected("future_partition", f"delivered under date={key_date(key)}, later than now "
                                                           f"({not_after:%Y-%m-%d %H:%M} UTC with the allowed "
                                                           "clock skew): a wrong partition or a wrong clock")
                if oversized:
                    raise FileRejected("too_large", f"{info.size:,} bytes > {max_object_bytes:,} (the limit, "
                                                    "PIPELINE_MAX_OBJECT_MB); split the export, or raise the limit")
                rows, extra, broken = _stage(key, digest, local, folder / part, max_decompressed_bytes, batch_rows)
            except FileRejected as exc:
                (folder / part).unlink(missing_ok=True)
                qkey = layout.quarantined_file(run_id, key, digest)
                if oversized:  # not copied: it stays in raw, never modified
                    quarantine = lake.uri_of(key)
                else:
                    lake.upload_file(qkey, local)
                    quarantine = lake.uri_of(qkey)
                lake.write_json(qkey + ".reason.json", {"source": lake.uri_of(key), "sha256": digest,
                                                         "rule": exc.rule, "detail": exc.detail,
                                                         "kept_at": quarantine})
                entry.update(status="rejected_file", rule=exc.rule, detail=exc.detail,
                             rows_delivered=None if oversized else _count_lines(local, max_decompressed_bytes),
                             quarantine=quarantine)
                log.warning("rejected %s: %s", lake.uri_of(key), exc)
            else:
                entry.update(status="staged", rows_delivered=rows, bronze_part=part, extra_columns=extra,
                             broken_lines=broken)
                seconds = time.perf_counter() - started
                log.info("staged %s: %d rows in %.1f s (%.0f rows/s)%s", lake.uri_of(key), rows, seconds,
                         rows / max(seconds, 1e-9), f" (extra columns ignored: {extra})" if extra else "")
            local.unlink(missing_ok=True)
            manifest["objects"].append(entry)
        (folder / BATCH_MANIFEST).write_text(json.dumps(manifest, indent=2))
    return {
        "bronze_batch": lake.uri_of(batch_key),
        "run_id": run_id,
        "objects": len(manifest["objects"]),
        "skipped_claimed_elsewhere": len(held_elsewhere),
        "unreadable_deferred": deferred,
        "rows_delivered": sum(o["rows_delivered"] or 0 for o in manifest["objects"]),
        "files_rejected": [o["key"] for o in manifest["objects"] if o["status"] == "rejected_file"],
    }


def _unreadable(lake: lk.Lake, info: lk.ObjectInfo, exc: Exception, max_attempts: int, run_id: str) -> dict | None:
    """Count one failed read of a raw object; its rejected manifest entry once ``max_attempts`` runs failed.

    The count lives in the lake per listed object (key + version tag), so Airflow's retries and
    the nightly runs all count; a new version of the object starts again at zero.
    """
    record_key = layout.read_attempts(info.key, info.tag)
    try:
        record = lake.read_json(record_key)
    except lk.ObjectMissing:
        record = {"key": info.key, "tag": info.tag, "attempts": []}
    if not any(a["run_id"] == run_id for a in record["attempts"]):  # a task retry is the same attempt
        record["attempts"].append({"run_id": run_id, "error": str(exc),
                                   "at": datetime.now(UTC).isoformat(timespec="seconds")})
        lake.write_json(record_key, record)
    tried = len(record["attempts"])
    if tried < max_attempts:
        log.error("cannot read %s (%d of %d attempts; the other objects go on, the next run tries again): %s",
                  lake.uri_of(info.key), tried, max_attempts, exc)
        return None
    log.error("rejecting %s: unreadable in %d runs: %s", lake.uri_of(info.key), tried, exc)
    detail = f"the store refused to read it in {tried} runs: {exc}"
    return {"key": info.key, "sha256": f"unreadable-{info.tag}", "bytes": info.size, "size": info.size,
            "tag": info.tag, "delivery_date": key_date(info.key), "status": "rejected_file", "rule": "unreadable",
            "detail": detail, "rows_delivered": None, "quarantine": lake.uri_of(info.key)}


def bronze_schema():
    import pyarrow as pa

    return pa.schema([(c, pa.string()) for c in RAW_COLUMNS + BRONZE_EXTRA]
                     + [("_source_key", pa.string()), ("_source_sha256", pa.string()), ("_source_row", pa.int64())])


def _stage(key: str, digest: str, local: Path, out: Path, max_decompressed: int, batch_rows: int
           ) -> tuple[int, list[str], list[int]]:
    """Stream one object into a bronze Parquet file, batch by batch.

    Returns the rows, the extra columns ignored and the lines quarantined as malformed.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = bronze_schema()
    rows, next_log = 0, 1_000_000
    with RawFile(key, local, max_decompressed, batch_rows) as raw, pq.ParquetWriter(out, schema) as writer:
        for batch in raw.batches():
            n = batch.num_rows
            batch = batch.append_column("_source_key", pa.array([key] * n, pa.string())) \
                .append_column("_source_sha256", pa.array([digest] * n, pa.string())) \
                .append_column("_source_row", pa.array(range(rows, rows + n), pa.int64()))
            writer.write_table(batch.cast(schema))
            rows += n
            if rows >= next_log:
                log.info("%s: %d rows parsed", key, rows)
                next_log += 1_000_000
        return rows, raw.extra_columns, raw.broken_lines


def _count_lines(path: Path, max_decompressed: int = DEFAULT_MAX_DECOMPRESSED) -> int | None:
    """Best-effort row count of an unusable file (non-blank lines after a header), for the ledger."""
    try:
        with open(path, "rb") as f:
            gz = f.read(2) == GZIP_MAGIC
        with tempfile.TemporaryDirectory(prefix="count-") as tmp:
            if gz:
                plain = Path(tmp) / "plain"
                gunzip_file(path, plain, max_decompressed)
                path = plain
            with open(path, "rb") as f:
                lines = sum(1 for line in f if line.strip())
    except Exception:
        return None
    return max(lines - 1, 0)
