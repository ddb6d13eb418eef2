"""A small writer for `describe` output: aligned "Label:  value" lines and
indented tables, in the layout `kubectl describe` uses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from kubeling.cli.printers import table_text

_INDENT = "  "
_MAX_LABEL_WIDTH = 40


@dataclass
class _Line:
    level: int
    label: str | None  # None: a continuation of the previous value
    value: str


@dataclass
class _Raw:
    level: int
    text: str


@dataclass
class _Table:
    level: int
    header: Sequence[str]
    rows: Sequence[Sequence[str]]


@dataclass
class Document:
    parts: list[_Line | _Table | _Raw] = field(default_factory=list)

    def add(self, label: str, value: object = "", level: int = 0) -> None:
        """`Label:  value`; a list value puts one item per line under the first."""
        if isinstance(value, list | tuple):
            values = [str(v) for v in value] or ["<none>"]
            self.parts.append(_Line(level, label, values[0]))
            self.parts += [_Line(level, None, v) for v in values[1:]]
        else:
            self.parts.append(_Line(level, label, str(value)))

    def heading(self, label: str, level: int = 0) -> None:
        self.parts.append(_Line(level, label, ""))

    def raw(self, text: str, level: int = 1) -> None:
        """A line printed as is (indented), e.g. YAML of a field without a layout."""
        self.parts.append(_Raw(level, text))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]], level: int = 1) -> None:
        """A table with a dashed rule under the header, as kubectl prints events."""
        rule = ["-" * len(h) for h in header]
        self.parts.append(_Table(level, header, [rule, *rows]))

    def render(self) -> str:
        widths: dict[int, int] = {}
        for part in self.parts:
            if isinstance(part, _Line) and part.label is not None and part.value:
                width = min(len(part.label) + 1, _MAX_LABEL_WIDTH)
                widths[part.level] = max(widths.get(part.level, 0), width)
        lines: list[str] = []
        last_label_width = 0
        for part in self.parts:
            indent = _INDENT * part.level
            if isinstance(part, _Raw):
                lines.append(indent + part.text)
                continue
            if isinstance(part, _Table):
                text = table_text(list(part.header), [list(r) for r in part.rows])
                lines += [indent + line for line in text.splitlines()]
                continue
            pad = widths.get(part.level, 0) + 2
            if part.label is None:
                lines.append(indent + " " * last_label_width + part.value)
                continue
            label = f"{part.label}:"
            last_label_width = max(pad, len(label) + 1)
            if not part.value:
                lines.append(indent + label)
            else:
                lines.append(indent + label.ljust(last_label_width) + part.value)
        return "".join(line.rstrip() + "\n" for line in lines)
