"""Delivered objects as rows: format detection, byte-level record counting, and the reader that
turns a CSV, JSON-lines or Parquet object (gzipped or not) into rows typed exactly as delivered.

Malformed lines are kept with their text and the rule they break (``_raw_line``, ``_malformed``);
a file whose structure is broken raises :class:`FileRejected` naming the file and the rule.
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
from pathlib import Path

import pandas as pd

from jobs.shared import layout
from jobs.shared.schemas import ID_COLUMNS, MALFORMED, RAW_COLUMNS, RAW_LINE

log = logging.getLogger(__name__)

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
MAX_MALFORMED_LINES = 10_000  # more than this many malformed lines: the file, not the rows, is broken
DEFAULT_BATCH_ROWS = 125_000
# Identifier columns: kept as the exact text delivered; a float type cannot hold every id exactly.
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
