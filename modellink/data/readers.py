"""Input files -> chunks of work, read in a fixed order so the output never depends on the
number of workers.

Line-oriented files (.jsonl, .txt, and .json holding JSON lines) become byte ranges that a worker
reads and parses itself, so the main process stays off the hot path. JSON arrays, .csv, .parquet
and .arrow are parsed in the main process, streaming, into batches of records. Parquet and arrow
need ``pyarrow``.
"""

import csv
import io
import json
import os
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Tuple, Union

from modellink.argument_errors import ArgumentError
from modellink.data.records import InvalidRecord

FORMATS = {".jsonl": "jsonl", ".json": "json", ".txt": "txt", ".csv": "csv", ".parquet": "parquet",
           ".arrow": "arrow"}
LINE_CHUNK_BYTES = 1 << 20
RECORD_CHUNK_SIZE = 1000
_READ_BLOCK = 1 << 20


@dataclass(frozen=True)
class LineChunk:
    """Bytes [start, end) of a line-oriented file; both ends are line starts."""

    path: str
    fmt: str
    start: int
    end: int


@dataclass(frozen=True)
class RecordChunk:
    """Parsed records; an InvalidRecord stands in for one that failed to parse."""

    path: str
    records: List[Union[dict, InvalidRecord]]
    locations: List[int]
    unit: str
    input_bytes: int


Chunk = Union[LineChunk, RecordChunk]


def discover_inputs(path: str) -> List[str]:
    """``path`` itself, or the supported data files directly inside the folder ``path`` (sorted)."""
    if os.path.isfile(path):
        if input_format(path) is None:
            raise ArgumentError(f"--input {path}: unsupported file type; supported: {', '.join(FORMATS)}")
        return [path]
    if os.path.isdir(path):
        files = sorted(os.path.join(path, n) for n in os.listdir(path)
                       if not n.startswith(".") and input_format(n) and os.path.isfile(os.path.join(path, n)))
        if not files:
            raise ArgumentError(f"--input {path}: no {', '.join(FORMATS)} files in this folder")
        return files
    raise ArgumentError(f"--input {path}: no such file or folder")


def max_chunks(files: List[str]) -> Optional[int]:
    """At most how many chunks `plan_chunks` yields, when that is known without reading: line
    files are cut every LINE_CHUNK_BYTES; record files (.json may be an array) depend on their
    record count (None)."""
    total = 0
    for path in files:
        if input_format(path) not in ("jsonl", "txt"):
            return None
        total += max(1, -(-os.path.getsize(path) // LINE_CHUNK_BYTES))
    return total


def input_format(path: str) -> Optional[str]:
    return FORMATS.get(os.path.splitext(path)[1].lower())


def plan_chunks(files: List[str]) -> Iterator[Chunk]:
    for path in files:
        fmt = input_format(path)
        if fmt == "json":
            fmt = "json_array" if _first_char(path) == "[" else "jsonl"
        if fmt in ("jsonl", "txt"):
            yield from _line_chunks(path, fmt)
        elif fmt == "json_array":
            yield from _batched(path, _json_array_records(path), "line")
        elif fmt == "csv":
            yield from _batched(path, _csv_records(path), "line")
        else:
            yield from _batched(path, _arrow_records(path, fmt), "row")


def read_line_chunk(chunk: LineChunk) -> Tuple[List[Tuple[int, bytes]], int]:
    """(line number within the chunk starting at 1, raw line) for each non-blank line, and the
    number of lines in the chunk."""
    with open(chunk.path, "rb") as f:
        f.seek(chunk.start)
        data = f.read(chunk.end - chunk.start)
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()
    return [(i, line) for i, line in enumerate(lines, start=1) if line.strip()], len(lines)


def _first_char(path: str) -> str:
    with open(path, "rb") as f:
        return f.read(4096).decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")[:1]


def _line_chunks(path: str, fmt: str) -> Iterator[LineChunk]:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        start = 0
        while start < size:
            end = min(start + LINE_CHUNK_BYTES, size)
            if end < size:
                f.seek(end - 1)
                f.readline()
                end = f.tell()
            yield LineChunk(path, fmt, start, end)
            start = end


def _batched(path: str, items: Iterator[Tuple[Any, int, int]], unit: str) -> Iterator[RecordChunk]:
    """Groups (record, location, file position) into RecordChunks."""
    records, locations, done = [], [], 0
    position = 0
    for record, location, position in items:
        records.append(record)
        locations.append(location)
        if len(records) == RECORD_CHUNK_SIZE:
            yield RecordChunk(path, records, locations, unit, position - done)
            records, locations, done = [], [], position
    if records:
        yield RecordChunk(path, records, locations, unit, os.path.getsize(path) - done)


def _json_array_records(path: str) -> Iterator[Tuple[Any, int, int]]:
    """Streams the elements of a top-level JSON array without loading the whole file."""
    decoder = json.JSONDecoder()
    with open(path, "r", encoding="utf-8-sig") as f:
        buf, pos, line, consumed = f.read(_READ_BLOCK), 0, 1, 0
        eof = False

        def skip_space() -> None:
            nonlocal pos, line
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n":
                    line += buf[pos] == "\n"
                    pos += 1
                if pos < len(buf) or not refill():
                    return

        def refill() -> bool:
            nonlocal buf, pos, consumed, eof
            if eof:
                return False
            more = f.read(_READ_BLOCK)
            eof = not more
            consumed += pos
            buf, pos = buf[pos:] + more, 0
            return bool(more)

        skip_space()
        if buf[pos:pos + 1] != "[":
            raise ArgumentError(f"{path}: expected a JSON array")
        pos += 1
        skip_space()
        if buf[pos:pos + 1] == "]":
            return
        while True:
            try:
                element, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError as err:
                if refill():
                    continue
                raise ArgumentError(f"{path}:{line}: malformed JSON array: {err.msg}") from None
            start_line = line
            line += buf.count("\n", pos, end)
            pos = end
            record = element if isinstance(element, dict) else InvalidRecord(
                f"expected a JSON object, got {type(element).__name__}")
            # Progress counts characters, which is close enough to bytes for an ETA.
            yield record, start_line, consumed + pos
            skip_space()
            separator = buf[pos:pos + 1]
            pos += 1
            if separator == "]":
                return
            if separator != ",":
                raise ArgumentError(f"{path}:{line}: malformed JSON array: expected ',' or ']'")
            skip_space()


def _csv_records(path: str) -> Iterator[Tuple[Any, int, int]]:
    with open(path, "rb") as raw:
        reader = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8-sig", newline=""))
        line = 2  # the header is line 1
        for row in reader:
            yield row, line, raw.tell()
            line = reader.line_num + 1


def _arrow_records(path: str, fmt: str) -> Iterator[Tuple[Any, int, int]]:
    try:
        import pyarrow
        import pyarrow.ipc
        import pyarrow.parquet
    except ImportError:
        raise ArgumentError(f"reading {fmt} input ({path}) needs the 'pyarrow' package, which is not installed") from None
    size = os.path.getsize(path)
    if fmt == "parquet":
        parquet = pyarrow.parquet.ParquetFile(path)
        total = max(parquet.metadata.num_rows, 1)
        batches = parquet.iter_batches(batch_size=RECORD_CHUNK_SIZE)
        position = lambda done: size * done // total  # noqa: E731 - row groups have no byte offsets
    else:
        source = pyarrow.memory_map(path)
        try:
            batches = iter(pyarrow.ipc.open_stream(source))
        except pyarrow.ArrowInvalid:
            reader = pyarrow.ipc.open_file(source)
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        position = lambda done: source.tell()  # noqa: E731
    row = 0
    for batch in batches:
        for record in batch.to_pylist():
            row += 1
            yield record, row, position(row)
