"""nftables transactions, the real backend (libnftables) and a fake one for unit tests.

A `Transaction` is a list of operations on the proxy's one table; a backend applies
it all or nothing (nft runs a whole script as one kernel transaction). Operations
are objects, not strings, so the fake can apply them to an in-memory model and print
it as sorted nft text: unit tests of rule generation read like the ruleset.
"""

from __future__ import annotations

import copy
import ctypes
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from kubeling.proxy import nftnl

FAMILY = "ip"
TABLE = "kubeling"
# The elements of one `add element` command: 300,000 in one took nft longer than in
# chunks (measured), and smaller netlink messages stay far from any buffer limit.
ELEMENTS_PER_COMMAND = 10_000


# libnftables takes ~3.5 KB of C heap per element or rule it parses (a full sync of
# 10,000 services x 10 endpoints: ~370 MB) and frees it after the command, but glibc
# keeps the freed pages: after a big transaction, hand them back to the kernel.
TRIM_AFTER_BYTES = 1_000_000


def release_free_memory() -> None:
    """glibc's malloc_trim(0): return free heap pages to the kernel (a few ms)."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL("libc.so.6")
        except OSError:
            _libc = False  # not glibc: nothing to do
    if isinstance(_libc, ctypes.CDLL):
        _libc.malloc_trim(0)


_libc: ctypes.CDLL | bool | None = None


class NftError(Exception):
    """nft refused a transaction; nothing of it was applied."""


class Op(NamedTuple):
    """One command. A NamedTuple, not a dataclass: a full sync makes ~10^5 of them."""

    verb: str  # add | delete | flush
    kind: str  # table | chain | rules | set | map | elements
    name: str = ""  # chain or set name ("" for the table)
    spec: str = ""  # chain hook or set declaration
    items: tuple[tuple[str, str], ...] = ()  # rules: (rule, ""); elements: (key, value)


@dataclass
class Transaction:
    ops: list[Op] = field(default_factory=list)

    def add_table(self) -> None:
        self.ops.append(Op("add", "table"))

    def delete_table(self) -> None:
        self.ops.append(Op("delete", "table"))

    def add_chain(self, name: str, hook: str = "") -> None:
        """`hook`, for base chains: e.g. "type nat hook output priority -100"."""
        self.ops.append(Op("add", "chain", name, hook))

    def flush_chain(self, name: str) -> None:
        self.ops.append(Op("flush", "chain", name))

    def delete_chain(self, name: str) -> None:
        self.ops.append(Op("delete", "chain", name))

    def add_rules(self, chain: str, rules: Iterable[str]) -> None:
        """Append rules to a chain, in order."""
        items = tuple((rule, "") for rule in rules)
        if items:
            self.ops.append(Op("add", "rules", chain, items=items))

    def add_rule(self, chain: str, rule: str) -> None:
        self.add_rules(chain, (rule,))

    def add_set(self, name: str, declaration: str) -> None:
        """`declaration`: e.g. "type ipv4_addr ; flags dynamic,timeout ; timeout 3h"."""
        self.ops.append(Op("add", "set", name, declaration))

    def add_map(self, name: str, declaration: str) -> None:
        self.ops.append(Op("add", "map", name, declaration))

    def delete_set(self, name: str) -> None:
        self.ops.append(Op("delete", "set", name))

    def flush_set(self, name: str) -> None:
        self.ops.append(Op("flush", "set", name))

    def flush_map(self, name: str) -> None:
        self.ops.append(Op("flush", "map", name))

    def add_elements(self, set_name: str, items: Iterable[tuple[str, str]]) -> None:
        """(key, value) pairs; the value is "" for a set."""
        batch = tuple(items)
        if batch:
            self.ops.append(Op("add", "elements", set_name, items=batch))

    def add_element(self, set_name: str, key: str, value: str = "") -> None:
        self.add_elements(set_name, ((key, value),))

    def delete_elements(self, set_name: str, keys: Iterable[str]) -> None:
        batch = tuple((key, "") for key in keys)
        if batch:
            self.ops.append(Op("delete", "elements", set_name, items=batch))

    def delete_element(self, set_name: str, key: str) -> None:
        self.delete_elements(set_name, (key,))

    def __len__(self) -> int:
        """Commands, counting each rule and element."""
        return sum(len(op.items) or 1 for op in self.ops)

    def script(self) -> str:
        """The transaction as an nft script (one command per line; the elements of
        one batch in few commands, which nft parses much faster than one each)."""
        return "\n".join(_render(op) for op in self.ops) + "\n"


def _render(op: Op) -> str:
    table = f"{FAMILY} {TABLE}"
    if op.kind == "table":
        return f"{op.verb} table {table}"
    if op.kind == "chain":
        if op.spec:
            return f"add chain {table} {op.name} {{ {op.spec} ; policy accept ; }}"
        return f"{op.verb} chain {table} {op.name}"
    if op.kind == "rules":
        prefix = f"add rule {table} {op.name} "
        return "\n".join(prefix + rule for rule, _ in op.items)
    if op.kind in ("set", "map"):
        if op.verb == "add":
            return f"add {op.kind} {table} {op.name} {{ {op.spec} ; }}"
        return f"{op.verb} {op.kind} {table} {op.name}"
    lines = []
    for start in range(0, len(op.items), ELEMENTS_PER_COMMAND):
        chunk = op.items[start : start + ELEMENTS_PER_COMMAND]
        elements = ", ".join(f"{key} : {value}" if value else key for key, value in chunk)
        lines.append(f"{op.verb} element {table} {op.name} {{ {elements} }}")
    return "\n".join(lines)


def split_comment(key: str) -> tuple[str, str]:
    """`KEY comment "TEXT"` -> (KEY, TEXT); a key without a comment -> (key, "")."""
    key, _, comment = key.partition(' comment "')
    return key, comment.removesuffix('"')


class NftBackend(Protocol):
    """What the proxier needs of nftables: atomic transactions, and reads of what
    is installed (for Explain, which must not trust the proxier's memory)."""

    def apply(self, tx: Transaction) -> None: ...

    def map_value(self, map_name: str, key: str) -> str | None:
        """The value of one element of a map in the installed table, or None."""
        ...

    def map_element(self, map_name: str, key: str) -> tuple[str, str] | None:
        """(value, comment) of one element of a map in the installed table, or None."""
        ...

    def chain_rules(self, chain: str) -> list[str] | None:
        """The installed rules of one chain, as nft prints them, or None."""
        ...

    def dump(self) -> str: ...


# -- the real thing ----------------------------------------------------------------


_ELEMENT = re.compile(r"elements = \{ (.*?) \}", re.S)


class LibNftables:
    """nftables through libnftables (ctypes): a script is one kernel transaction.

    Two contexts: one applies the syncs' transactions, one reads for Explain and
    dumps. A libnftables context is not thread-safe, so each has its lock; with
    one context a long read (a big chain listed) would hold up the next sync.
    The kernel gives each read a consistent view of one ruleset generation."""

    def __init__(self) -> None:
        import nftables  # the Debian libnftables1 binding, from pip-nftables

        self._nft = nftables.Nftables()
        self._nft.set_stateless_output(True)
        self._lock = threading.Lock()  # the sync lock: only transactions take it
        self._reader = nftables.Nftables()
        self._reader.set_stateless_output(True)
        self._read_lock = threading.Lock()
        self._map_codecs: dict[str, nftnl.Codec] | None = None

    def _cmd(self, script: str, read: bool = False) -> str:
        nft, lock = (self._reader, self._read_lock) if read else (self._nft, self._lock)
        with lock:
            rc, output, error = nft.cmd(script)
        if rc != 0:
            raise NftError(str(error).strip() or f"nft failed with code {rc}")
        return str(output)

    def apply(self, tx: Transaction) -> None:
        if tx.ops:
            script = tx.script()
            self._cmd(script)
            if len(script) >= TRIM_AFTER_BYTES:
                release_free_memory()

    def map_value(self, map_name: str, key: str) -> str | None:
        element = self.map_element(map_name, key)
        return element[0] if element else None

    def map_element(self, map_name: str, key: str) -> tuple[str, str] | None:
        codec = self._codecs().get(map_name)
        if codec is not None:
            # Straight from the kernel: nft 1.0.6 would first fetch every element of
            # the table (seconds with 10,000 services).
            return nftnl.get_element(TABLE, map_name, codec, key)
        try:
            text = self._cmd(f"get element {FAMILY} {TABLE} {map_name} {{ {key} }}", read=True)
        except NftError:
            return None  # nft says "No such file or directory" for a missing element
        match = _ELEMENT.search(text)
        if not match or " : " not in match.group(1):
            return None
        printed, value = match.group(1).split(" : ", 1)
        return value.strip(), split_comment(printed.strip())[1]

    def _codecs(self) -> dict[str, nftnl.Codec]:
        """The netlink codecs of the table's maps, from their declarations."""
        if self._map_codecs is None:
            from kubeling.proxy import rules  # (rules uses this module's Transaction)

            self._map_codecs = {
                name: nftnl.Codec.from_declaration(declaration)
                for name, (kind, declaration) in rules.sets().items()
                if kind == "map"
            }
        return self._map_codecs

    def chain_rules(self, chain: str) -> list[str] | None:
        try:
            text = self._cmd(f"list chain {FAMILY} {TABLE} {chain}", read=True)
        except NftError:
            return None
        lines = [line.strip() for line in text.splitlines()]
        start = next((i for i, line in enumerate(lines) if line.startswith("chain ")), None)
        if start is None:
            return None
        rules = []
        for line in lines[start + 1 :]:
            if line == "}":
                break
            if line and not line.startswith(("type ", "policy ")):
                rules.append(line)
        return rules

    def dump(self) -> str:
        try:
            return self._cmd(f"list table {FAMILY} {TABLE}", read=True)
        except NftError:
            return ""

    def delete_table(self) -> None:
        """Remove the table if present (`kubeling-proxy --cleanup`)."""
        self._cmd(f"add table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n")


# -- the fake ----------------------------------------------------------------------


@dataclass
class _Chain:
    hook: str = ""
    rules: list[str] = field(default_factory=list)


@dataclass
class _Set:
    kind: str  # set | map
    declaration: str
    elements: dict[str, str] = field(default_factory=dict)
    comments: dict[str, str] = field(default_factory=dict)  # key -> element comment


@dataclass
class _Table:
    chains: dict[str, _Chain] = field(default_factory=dict)
    sets: dict[str, _Set] = field(default_factory=dict)


_REFERENCE = re.compile(r"(?:goto|jump) (\S+)")
_SET_REFERENCE = re.compile(r"@(\S+)")


class FakeNftables:
    """An in-memory nftables table with nft's rules for what may be added and deleted
    (a missing object or one still referenced is an error, and the whole transaction
    is rolled back). `dump()` prints it as sorted nft text."""

    def __init__(self) -> None:
        self.table: _Table | None = None
        self.transactions = 0
        self.fail_next: str = ""  # set by tests: the next apply fails with this error

    def apply(self, tx: Transaction) -> None:
        if self.fail_next:
            error, self.fail_next = self.fail_next, ""
            raise NftError(error)
        table = copy.deepcopy(self.table)
        for op in tx.ops:
            table = _apply_op(table, op)
        self.table = table
        self.transactions += 1

    def map_value(self, map_name: str, key: str) -> str | None:
        if self.table is None or map_name not in self.table.sets:
            return None
        return self.table.sets[map_name].elements.get(key) or None

    def map_element(self, map_name: str, key: str) -> tuple[str, str] | None:
        # Through map_value: tests that slow down or count reads override that one.
        value = self.map_value(map_name, key)
        if value is None or self.table is None:
            return None
        return value, self.table.sets[map_name].comments.get(key, "")

    def chain_rules(self, chain: str) -> list[str] | None:
        if self.table is None or chain not in self.table.chains:
            return None
        return list(self.table.chains[chain].rules)

    def dump(self) -> str:
        if self.table is None:
            return ""
        out = [f"table {FAMILY} {TABLE} {{"]
        for name in sorted(self.table.sets):
            s = self.table.sets[name]
            out.append(f"\t{s.kind} {name} {{")
            out.extend(f"\t\t{part.strip()}" for part in s.declaration.split(";"))
            if s.elements:
                items = sorted(
                    _printed(k, s.comments.get(k, "")) + (f" : {v}" if v else "")
                    for k, v in s.elements.items()
                )
                out.append(f"\t\telements = {{ {', '.join(items)} }}")
            out.append("\t}")
        for name in sorted(self.table.chains):
            chain = self.table.chains[name]
            out.append(f"\tchain {name} {{")
            if chain.hook:
                out.append(f"\t\t{chain.hook}; policy accept;")
            out.extend(f"\t\t{rule}" for rule in chain.rules)
            out.append("\t}")
        out.append("}")
        return "\n".join(out) + "\n"


def _references(table: _Table) -> tuple[set[str], set[str]]:
    """Chains and sets referenced by rules or by map values."""
    chains: set[str] = set()
    sets: set[str] = set()
    for chain in table.chains.values():
        for rule in chain.rules:
            chains.update(_REFERENCE.findall(rule))
            sets.update(_SET_REFERENCE.findall(rule))
    for s in table.sets.values():
        for value in s.elements.values():
            chains.update(_REFERENCE.findall(value))
    return chains, sets


def _apply_op(table: _Table | None, op: Op) -> _Table | None:
    if op.kind == "table":
        if op.verb == "add":
            return table or _Table()
        if table is None:
            raise NftError("delete table: No such file or directory")
        return None
    if table is None:
        raise NftError(f"{op.verb} {op.kind} {op.name}: table does not exist")
    if op.kind == "chain":
        _chain_op(table, op)
    elif op.kind == "rules":
        if op.name not in table.chains:
            raise NftError(f"add rule {op.name}: No such file or directory")
        for rule, _ in op.items:
            for target in _REFERENCE.findall(rule):
                if target not in table.chains:
                    raise NftError(f"rule jumps to missing chain {target}")
            for target in _SET_REFERENCE.findall(rule):
                if target not in table.sets:
                    raise NftError(f"rule uses missing set {target}")
            table.chains[op.name].rules.append(rule)
    elif op.kind in ("set", "map"):
        _set_op(table, op)
    else:
        for key, value in op.items:
            _element_op(table, op.verb, op.name, key, value)
    return table


def _chain_op(table: _Table, op: Op) -> None:
    if op.verb == "add":
        table.chains.setdefault(op.name, _Chain(hook=op.spec))
        return
    if op.name not in table.chains:
        raise NftError(f"{op.verb} chain {op.name}: No such file or directory")
    if op.verb == "flush":
        table.chains[op.name].rules.clear()
        return
    if table.chains[op.name].rules:
        raise NftError(f"delete chain {op.name}: Device or resource busy (not empty)")
    if op.name in _references(table)[0]:
        raise NftError(f"delete chain {op.name}: Device or resource busy (referenced)")
    del table.chains[op.name]


def _set_op(table: _Table, op: Op) -> None:
    if op.verb == "add":
        table.sets.setdefault(op.name, _Set(op.kind, op.spec))
        return
    if op.name not in table.sets:
        raise NftError(f"{op.verb} set {op.name}: No such file or directory")
    if op.verb == "flush":
        table.sets[op.name].elements.clear()
        return
    if op.name in _references(table)[1]:
        raise NftError(f"delete set {op.name}: Device or resource busy")
    del table.sets[op.name]


def _printed(key: str, comment: str) -> str:
    return f'{key} comment "{comment}"' if comment else key


def _element_op(table: _Table, verb: str, name: str, key: str, value: str) -> None:
    s = table.sets.get(name)
    if s is None:
        raise NftError(f"{verb} element {name}: No such file or directory")
    # The comment is no part of the element's identity (nft ignores it in a delete).
    key, comment = split_comment(key)
    if verb == "delete":
        if key not in s.elements:
            raise NftError(f"delete element {name} {key}: No such file or directory")
        del s.elements[key]
        s.comments.pop(key, None)
        return
    if s.kind == "map" and not value:
        raise NftError(f"add element {name}: a map element needs a value")
    for target in _REFERENCE.findall(value):
        if target not in table.chains:
            raise NftError(f"map element jumps to missing chain {target}")
    old = s.elements.get(key)
    if old is not None and old != value:
        raise NftError(f"add element {name} {key}: File exists")
    if old is None and comment:
        s.comments[key] = comment  # an element added again keeps its comment, as in nft
    s.elements[key] = value
