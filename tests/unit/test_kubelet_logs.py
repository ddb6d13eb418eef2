"""CRI log files as `kubectl logs` shows them: parsing, partial lines, tail, since,
timestamps, and following a growing, rotated or truncated file."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from kubeling.kubelet import logs
from kubeling.kubelet.logs import LogOptions, parse_cri_line, parse_timestamp, read_log

T0 = 1_700_000_000  # 2023-11-14T22:13:20Z
FAST = 0.02


def stamp(seconds: float, fraction: str = "000000001") -> str:
    import datetime as dt

    when = dt.datetime.fromtimestamp(int(seconds), dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{when}.{fraction}Z"


def cri(text: str, at: float = T0, stream: str = "stdout", tag: str = "F") -> bytes:
    return f"{stamp(at)} {stream} {tag} {text}\n".encode()


def write(path: Path, *lines: bytes) -> None:
    with path.open("ab") as f:
        f.write(b"".join(lines))


async def read_all(path: Path, **options: object) -> str:
    return "".join([c async for c in read_log(str(path), LogOptions(**options))])  # type: ignore[arg-type]


# -- parsing ---------------------------------------------------------------------


def test_parse_timestamp_keeps_nanoseconds_and_offsets() -> None:
    assert parse_timestamp("2016-10-06T00:17:09.669794202Z") == 1475713029_669794202
    assert parse_timestamp("2016-10-06T00:17:09Z") == 1475713029_000000000
    assert parse_timestamp("2016-10-06T00:17:09.5Z") == 1475713029_500000000
    assert parse_timestamp("2016-10-06T02:17:09.669794202+02:00") == 1475713029_669794202
    assert parse_timestamp("2016-10-05T21:17:09.669794202-03:00") == 1475713029_669794202
    with pytest.raises(ValueError):
        parse_timestamp("yesterday")


def test_parse_cri_line() -> None:
    entry = parse_cri_line(b"2016-10-06T00:17:09.669794202Z stdout F hello world ")
    assert entry is not None
    assert entry.stream == "stdout"
    assert not entry.partial
    assert entry.content == b"hello world "
    assert entry.timestamp == "2016-10-06T00:17:09.669794202Z"
    partial = parse_cri_line(b"2016-10-06T00:17:09.669794202Z stderr P abc")
    assert partial is not None and partial.partial and partial.stream == "stderr"
    # More tags may follow the first one; an empty line is an empty content.
    tagged = parse_cri_line(b"2016-10-06T00:17:09Z stdout P:extra x")
    assert tagged is not None and tagged.partial
    empty = parse_cri_line(b"2016-10-06T00:17:09Z stdout F")
    assert empty is not None and empty.content == b""
    assert parse_cri_line(b"not a log line") is None
    assert parse_cri_line(b"garbage stdout F text") is None


# -- reading ---------------------------------------------------------------------


async def test_reads_whole_lines_of_both_streams(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    write(log, cri("one"), cri("two", stream="stderr"), cri(""), cri("three"))
    assert await read_all(log) == "one\ntwo\n\nthree\n"


async def test_missing_file_is_an_empty_log(tmp_path: Path) -> None:
    assert await read_all(tmp_path / "absent.log") == ""


async def test_partial_lines_are_joined_per_stream(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    write(
        log,
        cri("hel", tag="P"),
        cri("err-a", tag="P", stream="stderr"),
        cri("lo ", tag="P"),
        cri("err-b", stream="stderr"),
        cri("world"),
    )
    assert await read_all(log) == "err-aerr-b\nhello world\n"


async def test_multibyte_character_split_across_fragments(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    snowman = "☃".encode()
    with log.open("wb") as f:
        f.write(f"{stamp(T0)} stdout P ".encode() + snowman[:1] + b"\n")
        f.write(f"{stamp(T0)} stdout F ".encode() + snowman[1:] + b"!\n")
        f.write(f"{stamp(T0)} stdout F ".encode() + b"\xff bad\n")
    assert await read_all(log) == "☃!\n\ufffd bad\n"


async def test_malformed_lines_are_skipped(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    write(log, cri("a"), b"this is not CRI\n", cri("b"))
    assert await read_all(log) == "a\nb\n"


async def test_unfinished_output_is_shown_at_the_end(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    write(log, cri("done"), cri("prompt> ", tag="P"))
    assert await read_all(log) == "done\nprompt> "


async def test_tail_counts_whole_lines(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    write(log, cri("1"), cri("2a", tag="P"), cri("2b"), cri("3"), cri("4"))
    assert await read_all(log, tail_lines=3) == "2a2b\n3\n4\n"
    assert await read_all(log, tail_lines=0) == ""
    assert await read_all(log, tail_lines=100) == "1\n2a2b\n3\n4\n"


async def test_since_keeps_recent_lines(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    write(log, cri("old", at=T0 - 120), cri("recent", at=T0 - 30), cri("new", at=T0))
    chunks = read_log(str(log), LogOptions(since_seconds=60), clock=lambda: float(T0))
    assert "".join([c async for c in chunks]) == "recent\nnew\n"
    chunks = read_log(
        str(log), LogOptions(since_seconds=200, tail_lines=1), clock=lambda: float(T0)
    )
    assert "".join([c async for c in chunks]) == "new\n"


async def test_timestamps_prefix_the_first_fragment_time(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    write(log, cri("a", at=T0, tag="P"), cri("b", at=T0 + 1), cri("c", at=T0 + 2))
    text = await read_all(log, timestamps=True)
    assert text == f"{stamp(T0)} ab\n{stamp(T0 + 2)} c\n"


async def test_large_logs_come_in_several_chunks(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    line = "x" * 999
    write(log, *[cri(line) for _ in range(500)])
    chunks = [c async for c in read_log(str(log))]
    assert len(chunks) > 1
    assert "".join(chunks) == (line + "\n") * 500


# -- tails of big files --------------------------------------------------------------


def bytes_read() -> int:
    """Bytes this process has read through read(2) so far (its threads included)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


async def test_tail_of_a_large_file_reads_only_its_end(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    line = cri("x" * 200)
    count = 50 * 1024 * 1024 // len(line) + 1
    with log.open("wb") as f:
        for start in range(0, count, 10_000):
            f.write(line * min(10_000, count - start))
        f.write(cri("second to last") + cri("last", stream="stderr"))
    assert log.stat().st_size > 50 * 1024 * 1024
    before = bytes_read()
    text = await read_all(log, tail_lines=3)
    read = bytes_read() - before
    assert text == "x" * 200 + "\nsecond to last\nlast\n"
    # The last blocks, and the bounded search for a head of stderr's line (it may
    # have fragments further up), not 50 MB.
    assert read < 512 * 1024, read


def entries(seed: int, count: int) -> list[bytes]:
    """Random stdout/stderr output with fragments; every stream ends its last line."""
    rng = random.Random(seed)
    out: list[bytes] = []
    open_streams: set[str] = set()
    for i in range(count):
        stream = rng.choice(["stdout", "stderr"])
        tag = rng.choice(["P", "F", "F"])
        (open_streams.add if tag == "P" else open_streams.discard)(stream)
        out.append(
            cri(f"{stream[3:]}{i}" + " y" * rng.randrange(6), at=T0 + i, stream=stream, tag=tag)
        )
    out += [cri("end", at=T0 + count, stream=s) for s in sorted(open_streams)]
    return out


@pytest.mark.parametrize("seed", range(12))
async def test_tail_is_the_end_of_the_whole_log(
    tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tiny blocks: lines, fragments and newlines fall across block edges.
    monkeypatch.setattr(logs, "_TAIL_BLOCK", 7 + seed)
    log = tmp_path / "0.log"
    write(log, *entries(seed, 40))
    whole = (await read_all(log)).splitlines(keepends=True)
    for n in (0, 1, 2, 3, 5, 8, 13, len(whole) - 1, len(whole), len(whole) + 5):
        expected = "".join(whole[max(len(whole) - n, 0) :] if n else [])
        assert await read_all(log, tail_lines=n) == expected, n


async def test_tail_keeps_unfinished_output_and_a_line_being_written(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    write(log, cri("1"), cri("2"), cri("3a", tag="P"), cri("3b", tag="P"), b"not yet CRI")
    assert await read_all(log, tail_lines=2) == "2\n3a3b"
    write(log, b"\n", cri("half", at=T0 + 1, stream="stderr")[:-1])  # no newline yet
    # Unfinished output comes last, by time, as in a whole read.
    assert await read_all(log, tail_lines=2) == "3a3bhalf\n"
    assert await read_all(log) == "1\n2\n3a3bhalf\n"


async def test_follow_from_a_tail_joins_fragments_written_before(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    write(log, cri("1"), cri("2a", tag="P"))
    reader = follow(log, tail_lines=1)
    await reader.wait_for("1\n")
    write(log, cri("2b"))
    await reader.wait_for("1\n2a2b\n")
    await reader.stop()


# -- following -------------------------------------------------------------------


class Collector:
    """Reads a followed log in the background."""

    def __init__(self, chunks: AsyncIterator[str]) -> None:
        self.text = ""
        self.task = asyncio.create_task(self._run(chunks))

    async def _run(self, chunks: AsyncIterator[str]) -> None:
        async for chunk in chunks:
            self.text += chunk

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def wait_for(self, expected: str) -> None:
        async with asyncio.timeout(5):
            while self.text != expected:
                assert not self.task.done(), f"reader ended early with {self.text!r}"
                await asyncio.sleep(0.01)


def follow(path: Path, running: Callable[[], bool] | None = None, **options: object) -> Collector:
    opts = LogOptions(follow=True, poll_interval=FAST, **options)  # type: ignore[arg-type]
    return Collector(read_log(str(path), opts, running))


async def test_follow_streams_new_lines_until_the_container_stops(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    write(log, cri("1"), cri("2"), cri("3"))
    alive = True
    reader = follow(log, lambda: alive, tail_lines=1)
    await reader.wait_for("3\n")
    write(log, cri("4a", tag="P"))
    await asyncio.sleep(3 * FAST)
    assert reader.text == "3\n"  # half a line waits for the rest
    write(log, cri("4b"))
    await reader.wait_for("3\n4a4b\n")
    # The last output, written just before the container exited, is not lost.
    write(log, cri("bye"), cri("no newline", tag="P"))
    alive = False
    await asyncio.wait_for(reader.task, 5)
    assert reader.text == "3\n4a4b\nbye\nno newline"


async def test_follow_handles_torn_writes(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    log.touch()
    reader = follow(log)
    line = cri("whole")
    write(log, line[:10])
    await asyncio.sleep(3 * FAST)
    write(log, line[10:])
    await reader.wait_for("whole\n")
    await reader.stop()


async def test_follow_waits_for_the_file_to_appear(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    reader = follow(log, lambda: True)
    await asyncio.sleep(3 * FAST)
    write(log, cri("first"))
    await reader.wait_for("first\n")
    await reader.stop()


async def test_follow_of_a_stopped_container_drains_and_ends(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    write(log, cri("a"), cri("b"))
    chunks = read_log(str(log), LogOptions(follow=True, poll_interval=FAST), lambda: False)
    assert "".join([c async for c in chunks]) == "a\nb\n"
    missing = read_log(str(tmp_path / "x.log"), LogOptions(follow=True), lambda: False)
    assert [c async for c in missing] == []


async def test_follow_survives_rotation(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    write(log, cri("before"))
    reader = follow(log, lambda: True)
    await reader.wait_for("before\n")
    # As the kubelet rotates: the file is renamed, the runtime reopens a new one.
    write(log, cri("last of old", tag="P"))
    os.rename(log, tmp_path / "0.log.20240101-000000")
    await asyncio.sleep(3 * FAST)
    write(log, cri(" file"), cri("after"))
    await reader.wait_for("before\nlast of old file\nafter\n")
    await reader.stop()


async def test_follow_survives_truncation(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    write(log, cri("a long line before truncation"))
    reader = follow(log)
    await reader.wait_for("a long line before truncation\n")
    log.write_bytes(b"")  # copytruncate: same file, back to empty
    await asyncio.sleep(3 * FAST)
    write(log, cri("new"))
    await reader.wait_for("a long line before truncation\nnew\n")
    await reader.stop()


async def test_follow_ends_when_the_caller_stops_reading(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    write(log, cri("a"))
    chunks = read_log(str(log), LogOptions(follow=True, poll_interval=FAST), lambda: True)
    assert await anext(chunks) == "a\n"
    await chunks.aclose()  # closes the file; no error


async def test_follow_applies_since_to_new_lines(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    write(log, cri("old", at=T0 - 100))
    reader = Collector(
        read_log(
            str(log),
            LogOptions(follow=True, since_seconds=10, poll_interval=FAST),
            clock=lambda: float(T0),
        )
    )
    write(log, cri("stale", at=T0 - 50), cri("fresh", at=T0 + 1))
    await reader.wait_for("fresh\n")
    await reader.stop()
