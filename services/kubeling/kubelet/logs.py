"""Reading containerd's CRI container log files the way `kubectl logs` shows them.

containerd writes one entry per line: ``TIMESTAMP STREAM TAG CONTENT`` where
TIMESTAMP is RFC3339Nano, STREAM is stdout or stderr and TAG is ``F`` for the end of
a line or ``P`` for a fragment (a long line split up, or output not yet ended by a
newline). Fragments are joined, per stream, into whole lines before anything else
(tail, since) looks at them.

A tail reads the file backwards in blocks from its end, only as far as its last
lines start, then forwards from there: memory and reading are bounded by the lines
shown, not by the file. As upstream's kubelet, since filters the tailed lines.
Every read runs in a thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import os
import re
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

__all__ = [
    "CriEntry",
    "LogLine",
    "LogOptions",
    "parse_cri_line",
    "parse_timestamp",
    "read_log",
]

_PARTIAL = b"P"
_READ_SIZE = 1024 * 1024
# Reading backwards for a tail: a few hundred typical lines per block.
_TAIL_BLOCK = 64 * 1024
# How far back, once the tail's lines are counted, the first fragments of their
# lines are looked for (16 of containerd's largest, 16 KiB, fragments).
_HEAD_SEARCH = 256 * 1024
# Big enough to keep the number of messages down, small enough to stream smoothly.
_CHUNK_SIZE = 64 * 1024
_NS = 1_000_000_000

_TIMESTAMP = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d\d):(\d\d))"
)


def parse_timestamp(text: str) -> int:
    """Nanoseconds since the epoch of an RFC3339Nano time ("...T00:17:09.669794202Z").

    datetime keeps only microseconds, so the fraction is handled here.
    """
    match = _TIMESTAMP.fullmatch(text)
    if match is None:
        raise ValueError(f"invalid RFC3339 timestamp {text!r}")
    year, month, day, hour, minute, second = (int(match[i]) for i in range(1, 7))
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    if match[9]:
        offset = int(match[10]) * 3600 + int(match[11]) * 60
        seconds -= offset if match[9] == "+" else -offset
    fraction = int((match[7] or "0").ljust(9, "0"))
    return seconds * _NS + fraction


@dataclass(frozen=True, slots=True)
class CriEntry:
    """One line of a CRI log file."""

    timestamp: str  # as written, so --timestamps shows exactly what containerd recorded
    time_ns: int
    stream: str
    partial: bool
    content: bytes


def parse_cri_line(raw: bytes) -> CriEntry | None:
    """An entry from one line (without its newline); None when it is not one, which
    the kubelet also skips rather than failing the whole read."""
    parts = raw.split(b" ", 3)
    if len(parts) < 3:
        return None
    try:
        timestamp = parts[0].decode("ascii")
        time_ns = parse_timestamp(timestamp)
    except ValueError:
        return None
    stream = parts[1].decode("ascii", "replace")
    # The tag field may carry more tags after ':'; the first says partial or full.
    partial = parts[2].split(b":", 1)[0] == _PARTIAL
    return CriEntry(timestamp, time_ns, stream, partial, parts[3] if len(parts) == 4 else b"")


@dataclass(frozen=True, slots=True)
class LogLine:
    """A whole line of output, with the time of its first fragment."""

    timestamp: str
    time_ns: int
    stream: str
    text: str  # ends with a newline, except for output that was never finished

    def render(self, timestamps: bool) -> str:
        return f"{self.timestamp} {self.text}" if timestamps else self.text


class _Assembler:
    """Turns raw file bytes into whole lines, joining P fragments per stream."""

    def __init__(self) -> None:
        self._torn = b""  # the end of a physical line not yet fully written
        self._pending: dict[str, tuple[CriEntry, list[bytes]]] = {}

    def feed(self, data: bytes) -> list[LogLine]:
        *complete, self._torn = (self._torn + data).split(b"\n")
        lines: list[LogLine] = []
        for raw in complete:
            line = self._add(raw)
            if line is not None:
                lines.append(line)
        return lines

    def _add(self, raw: bytes) -> LogLine | None:
        entry = parse_cri_line(raw)
        if entry is None:
            return None
        first, parts = self._pending.pop(entry.stream, (entry, []))
        parts.append(entry.content)
        if entry.partial:
            self._pending[entry.stream] = (first, parts)
            return None
        parts.append(b"\n")
        return _line(first, parts)

    def drop_torn(self) -> None:
        """Forget half a physical line: the file it came from has been replaced."""
        self._torn = b""

    def flush(self) -> list[LogLine]:
        """What is left once no more output will come: unfinished fragments."""
        lines = []
        if self._torn:
            line = self._add(self._torn)
            self._torn = b""
            if line is not None:
                lines.append(line)
        lines += [_line(first, parts) for first, parts in self._pending.values()]
        self._pending.clear()
        lines.sort(key=lambda line: line.time_ns)
        return lines


def _line(first: CriEntry, parts: list[bytes]) -> LogLine:
    # Decoding whole lines keeps multi-byte characters split across fragments intact.
    text = b"".join(parts).decode("utf-8", "replace")
    return LogLine(first.timestamp, first.time_ns, first.stream, text)


class _LogFile:
    """An open log file that notices when it is rotated (renamed and recreated) or
    truncated, as the kubelet's log manager and logrotate do."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: BinaryIO | None = None
        self._identity: tuple[int, int] | None = None

    def _open(self) -> bool:
        try:
            file = open(self.path, "rb")  # noqa: SIM115 - kept open across reads
        except FileNotFoundError:
            return False
        info = os.fstat(file.fileno())
        self._file, self._identity = file, (info.st_dev, info.st_ino)
        return True

    def read(self) -> bytes:
        if self._file is None and not self._open():
            return b""
        assert self._file is not None
        return self._file.read(_READ_SIZE)

    def seek_tail(self, lines: int) -> None:
        """Open the file at the start of its last `lines` whole lines."""
        if self._file is None and not self._open():
            return
        assert self._file is not None
        self._file.seek(_tail_start(self._file, lines))

    def replaced(self) -> bool:
        """At the end of the file: is there a new file (or a truncated one) to read?"""
        if self._file is None:
            return False  # read() opens it once it exists
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return False  # rotated but not yet recreated: wait for the new file
        if (info.st_dev, info.st_ino) != self._identity:
            return True
        return info.st_size < self._file.tell()

    def reopen(self) -> None:
        self.close()
        self._open()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _lines_backwards(file: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """(offset, line without its newline) for the file's newline-ended lines, last
    first, read in blocks from the end. Bytes after the last newline (a line being
    written) are left to the forward read."""
    pos = file.seek(0, os.SEEK_END)
    rest = b""  # the end of a line whose start lies further back, newline included
    torn = True
    while pos > 0:
        size = min(_TAIL_BLOCK, pos)
        pos -= size
        file.seek(pos)
        buf = file.read(size) + rest
        if torn:
            newline = buf.rfind(b"\n")
            if newline < 0:
                rest = b""
                continue
            buf, torn = buf[: newline + 1], False
        end = len(buf)  # buf[end - 1] is the newline of the next line to give
        while (newline := buf.rfind(b"\n", 0, end - 1)) >= 0:
            yield pos + newline + 1, buf[newline + 1 : end - 1]
            end = newline + 1
        rest = buf[:end]
    if rest:
        yield 0, rest[:-1]


def _tail_start(file: BinaryIO, lines: int) -> int:
    """Where the last `lines` whole lines begin, found by reading backwards.

    Going back, a line ends at an F entry and takes the P entries of its stream
    before it; it is whole once the stream's previous F entry (or the start of the
    file) shows up. The last lines are the ones ending at the last `lines` F entries
    plus each stream's unfinished output (P entries after its last F); reading stops
    once every one of them is whole. A stream that wrote nothing else for a long way
    back may still hide a fragment further up: the search for one is bounded by
    _HEAD_SEARCH bytes (a line missing a head that far away is shown without it)."""
    start: int | None = None  # before the first line that counts
    ends = 0  # F entries seen: lines counted
    growing: set[str] = set()  # streams whose counted line is not whole yet
    done: set[str] = set()  # streams with no more lines to count
    give_up_at = -1  # the offset where the search for heads stops
    for offset, raw in _lines_backwards(file):
        if start is None:
            start = offset + len(raw) + 1  # nothing counted yet: after the last line
        if ends >= lines:
            if not growing or offset < give_up_at:
                break
            if give_up_at < 0:
                give_up_at = offset - _HEAD_SEARCH
        entry = parse_cri_line(raw)
        if entry is None or entry.stream in done:
            continue
        stream = entry.stream
        if entry.partial:
            growing.add(stream)  # part of the counted line, or unfinished output
            start = offset
            continue
        growing.discard(stream)  # this F ends the line before the counted one
        if ends < lines:
            ends += 1
            growing.add(stream)
            start = offset
        else:
            done.add(stream)
    return start or 0


@dataclass(frozen=True)
class LogOptions:
    tail_lines: int | None = None  # the last N lines only (0: none of the existing ones)
    since_seconds: float | None = None  # only lines newer than this many seconds
    timestamps: bool = False  # prefix each line with its RFC3339Nano time
    follow: bool = False  # keep reading as the file grows
    poll_interval: float = 0.15


async def read_log(
    path: str,
    options: LogOptions | None = None,
    is_running: Callable[[], bool] | None = None,
    clock: Callable[[], float] = time.time,
) -> AsyncGenerator[str, None]:
    """Yield the log at `path` as text chunks of whole lines.

    With follow, waits for more output until `is_running()` says the container has
    stopped and the file is drained (without `is_running`, until cancelled). Tail
    and since apply to the lines present when the read starts (since to the tailed
    lines, as upstream); since also filters followed lines. A missing file is an
    empty log (the container may not have written anything yet).
    """
    options = options or LogOptions()
    since_ns = None
    if options.since_seconds is not None:
        since_ns = int((clock() - options.since_seconds) * _NS)

    def wanted(lines: Iterable[LogLine]) -> list[LogLine]:
        return [line for line in lines if since_ns is None or line.time_ns >= since_ns]

    def chunks(lines: Iterable[LogLine]) -> Iterator[str]:
        return _batch(line.render(options.timestamps) for line in lines)

    file = _LogFile(path)
    assembler = _Assembler()
    tail = options.tail_lines
    # With a tail only the last lines are kept while reading; without, lines stream.
    backlog: deque[LogLine] = deque(maxlen=max(tail, 0) if tail is not None else None)
    try:
        if tail is not None:
            await asyncio.to_thread(file.seek_tail, tail)
        while data := await asyncio.to_thread(file.read):
            lines = wanted(assembler.feed(data))
            if tail is None:
                for chunk in chunks(lines):
                    yield chunk
            else:
                backlog.extend(lines)
        if not options.follow:
            backlog.extend(wanted(assembler.flush()))
            for chunk in chunks(backlog):
                yield chunk
            return
        for chunk in chunks(backlog):
            yield chunk
        backlog.clear()
        while True:
            data = await asyncio.to_thread(file.read)
            if data:
                for chunk in chunks(wanted(assembler.feed(data))):
                    yield chunk
                continue
            if file.replaced():
                file.reopen()
                assembler.drop_torn()
                continue
            if is_running is not None and not is_running():
                # Output written between the last read and the check is still shown.
                lines = []
                while data := await asyncio.to_thread(file.read):
                    lines += assembler.feed(data)
                lines += assembler.flush()
                for chunk in chunks(wanted(lines)):
                    yield chunk
                return
            await asyncio.sleep(options.poll_interval)
    finally:
        with contextlib.suppress(OSError):
            file.close()


def _batch(texts: Iterable[str]) -> Iterator[str]:
    """Join texts into chunks of about _CHUNK_SIZE characters."""
    buffer: list[str] = []
    size = 0
    for text in texts:
        buffer.append(text)
        size += len(text)
        if size >= _CHUNK_SIZE:
            yield "".join(buffer)
            buffer, size = [], 0
    if buffer:
        yield "".join(buffer)
