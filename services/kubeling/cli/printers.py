"""Output: rich tables without borders (kubectl-like), YAML, JSON and names."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import Any, TextIO

import yaml
from google.protobuf.message import Message
from rich.console import Console
from rich.table import Table
from rich.text import Text

from kubeling.api.kinds import Kind
from kubeling.api.objects import clone, to_dict
from kubeling.cli.resources import object_name
from kubeling.cli.tables import Row, columns_for

OUTPUT_FORMATS = ("wide", "yaml", "json", "name")
# Tables never wrap or truncate: like kubectl, long rows simply run on.
_UNLIMITED_WIDTH = 100_000
_COLUMN_GAP = 3


def table_text(
    header: Sequence[str] | None, rows: Sequence[Row], min_widths: Sequence[int] | None = None
) -> str:
    table = Table(
        box=None,
        show_header=header is not None,
        header_style="bold",
        show_edge=False,
        pad_edge=False,
        padding=(0, _COLUMN_GAP, 0, 0),
    )
    count = len(header) if header is not None else max((len(r) for r in rows), default=0)
    for index in range(count):
        title = header[index] if header is not None else ""
        minimum = min_widths[index] if min_widths and index < len(min_widths) else None
        table.add_column(title, no_wrap=True, overflow="ignore", min_width=minimum)
    for row in rows:
        # Text, not str: cell values (event messages) must not be read as rich markup.
        table.add_row(*(Text(cell) for cell in row))
    buffer = io.StringIO()
    console = Console(file=buffer, width=_UNLIMITED_WIDTH, highlight=False, color_system=None)
    console.print(table)
    return "".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines())


class TablePrinter:
    """Prints a kind's table; later rows (from a watch) reuse the first widths."""

    def __init__(self, kind: Kind, wide: bool, all_namespaces: bool, out: TextIO) -> None:
        self.kind = kind
        self.wide = wide
        self.all_namespaces = all_namespaces and kind.namespaced
        self.out = out
        self.columns = columns_for(kind)
        self.widths: list[int] = []

    def header(self) -> Row:
        header = self.columns.header(self.wide)
        return ["NAMESPACE", *header] if self.all_namespaces else header

    def row(self, obj: Message) -> Row:
        cells = self.columns.cells(obj, self.wide)
        if self.all_namespaces:
            cells.insert(0, obj.metadata.namespace)  # type: ignore[attr-defined]
        return cells

    def print(self, objects: Sequence[Message], with_header: bool = True) -> None:
        rows = [self.row(obj) for obj in objects]
        header = self.header()
        if with_header:
            self.widths = [
                max([len(header[i]), *(len(r[i]) for r in rows)]) for i in range(len(header))
            ]
        text = table_text(header if with_header else None, rows, self.widths or None)
        print(text, end="", file=self.out)
        self.out.flush()


def output_dict(kind: Kind, obj: Message) -> dict[str, Any]:
    """The object as Kubernetes-shaped JSON, always with apiVersion and kind."""
    if not obj.api_version or not obj.kind:  # type: ignore[attr-defined]
        obj = clone(obj)
        obj.api_version = kind.api_version  # type: ignore[attr-defined]
        obj.kind = kind.name  # type: ignore[attr-defined]
    data: dict[str, Any] = _whole_numbers(to_dict(obj))
    return data


def _whole_numbers(data: Any) -> Any:
    """80.0 → 80: IntOrString fields are google.protobuf.Value, whose numbers are
    doubles, but Kubernetes shows ports and counts as integers (and none of our
    kinds has a genuinely fractional number field)."""
    if isinstance(data, dict):
        return {key: _whole_numbers(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_whole_numbers(value) for value in data]
    if isinstance(data, float) and data.is_integer():
        return int(data)
    return data


def list_dict(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}}


def dump_json(data: Any) -> str:
    return json.dumps(data, indent=4, ensure_ascii=False) + "\n"


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)


def print_objects(
    objects: Sequence[tuple[Kind, Message]], fmt: str, out: TextIO, as_list: bool
) -> None:
    """`-o json|yaml|name` for objects; several (or any list result) form a v1 List."""
    if fmt == "name":
        for kind, obj in objects:
            print(object_name(kind, obj.metadata.name), file=out)  # type: ignore[attr-defined]
        return
    dicts = [output_dict(kind, obj) for kind, obj in objects]
    data: Any = list_dict(dicts) if as_list or len(dicts) != 1 else dicts[0]
    out.write(dump_json(data) if fmt == "json" else dump_yaml(data))
    out.flush()


def print_watched(kind: Kind, obj: Message, fmt: str, out: TextIO) -> None:
    """One object from a watch: a JSON document per event, YAML separated by ---."""
    if fmt == "name":
        print(object_name(kind, obj.metadata.name), file=out)  # type: ignore[attr-defined]
    elif fmt == "json":
        out.write(dump_json(output_dict(kind, obj)))
    else:
        out.write("---\n" + dump_yaml(output_dict(kind, obj)))
    out.flush()
