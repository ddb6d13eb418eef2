"""Kubernetes label selectors and field selectors.

Label selectors come in two shapes that must behave identically:

* the string form used by ``kubectl -l`` and ``?labelSelector=``
  (``app=web,tier in (fe,be),!canary``), parsed by :func:`parse_label_selector`;
* the structured form embedded in objects (``matchLabels`` /
  ``matchExpressions``), converted by :func:`selector_from_match`.

Both produce a :class:`LabelSelector` whose requirements are validated and
sorted, so equal selectors compare equal and print the same canonical string.

Field selectors (``spec.nodeName=node-1``) only support equality tests on a
fixed set of fields per resource; :meth:`FieldSelector.exact_value` lets the
store use an index when a field is pinned to one value.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from kubeling.api import naming

__all__ = [
    "DOES_NOT_EXIST",
    "EQUALS",
    "EXISTS",
    "IN",
    "NOT_EQUALS",
    "NOT_IN",
    "FieldSelector",
    "FieldTerm",
    "LabelSelector",
    "Requirement",
    "SelectorError",
    "parse_field_selector",
    "parse_label_selector",
    "selector_from_match",
]

EQUALS = "="
NOT_EQUALS = "!="
IN = "in"
NOT_IN = "notin"
EXISTS = "exists"
DOES_NOT_EXIST = "!"

_LABEL_OPERATORS = frozenset({EQUALS, NOT_EQUALS, IN, NOT_IN, EXISTS, DOES_NOT_EXIST})
_SINGLE_VALUE_OPERATORS = frozenset({EQUALS, NOT_EQUALS})
_SET_OPERATORS = frozenset({IN, NOT_IN})
_NO_VALUE_OPERATORS = frozenset({EXISTS, DOES_NOT_EXIST})

# The structured (API object) operator names and their string-form equivalents.
_MATCH_OPERATORS: dict[str, str] = {
    "In": IN,
    "NotIn": NOT_IN,
    "Exists": EXISTS,
    "DoesNotExist": DOES_NOT_EXIST,
}


class SelectorError(ValueError):
    """Raised for a syntactically or semantically invalid selector."""


# --------------------------------------------------------------------------
# Label selectors
# --------------------------------------------------------------------------


def _requirement_problem(key: str, operator: str, values: tuple[str, ...]) -> str | None:
    """Return why a requirement is invalid, or None.

    Kept separate from ``Requirement.__post_init__`` so callers can prefix the
    reason with context (the selector text, or a matchExpressions path).
    """
    if operator not in _LABEL_OPERATORS:
        return f'unsupported operator "{operator}"'
    key_errors = naming.label_key(key)
    if key_errors:
        return f'invalid label key "{key}": {"; ".join(key_errors)}'
    for value in values:
        value_errors = naming.label_value(value)
        if value_errors:
            return f'invalid label value "{value}" for key "{key}": {"; ".join(value_errors)}'
    if operator in _SINGLE_VALUE_OPERATORS and len(values) != 1:
        return f'operator "{operator}" needs exactly one value, got {len(values)}'
    if operator in _SET_OPERATORS and not values:
        return f'operator "{operator}" needs at least one value'
    if operator in _NO_VALUE_OPERATORS and values:
        return f'operator "{operator}" takes no values'
    return None


@dataclass(frozen=True)
class Requirement:
    """One label condition, e.g. ``tier in (be,fe)``.

    ``operator`` is one of ``"="``, ``"!="``, ``"in"``, ``"notin"``,
    ``"exists"`` or ``"!"`` (does not exist); ``"=="`` is accepted and
    normalised to ``"="``.  Set values are de-duplicated and sorted so that
    equivalent requirements are equal.
    """

    key: str
    operator: str
    values: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # A bare str is a Sequence[str] too; tuple("abc") would silently give
        # ("a", "b", "c"), so refuse it outright.
        if isinstance(self.values, str):
            raise SelectorError(f'values for key "{self.key}" must be a sequence, not a string')
        operator = EQUALS if self.operator == "==" else self.operator
        values = tuple(self.values)
        problem = _requirement_problem(self.key, operator, values)
        if problem is not None:
            raise SelectorError(problem)
        if operator in _SET_OPERATORS:
            values = tuple(sorted(set(values)))
        # Frozen dataclass: normalise through object.__setattr__.
        object.__setattr__(self, "operator", operator)
        object.__setattr__(self, "values", values)

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Evaluate against an object's labels.

        As in Kubernetes, the negative operators (``!=``, ``notin``) match
        objects that do not carry the key at all.
        """
        present = self.key in labels
        if self.operator == EXISTS:
            return present
        if self.operator == DOES_NOT_EXIST:
            return not present
        if self.operator == EQUALS:
            return present and labels[self.key] == self.values[0]
        if self.operator == NOT_EQUALS:
            return not present or labels[self.key] != self.values[0]
        if self.operator == IN:
            return present and labels[self.key] in self.values
        # NOT_IN: the only operator left after __post_init__ validation.
        return not present or labels[self.key] not in self.values

    def __str__(self) -> str:
        if self.operator == EXISTS:
            return self.key
        if self.operator == DOES_NOT_EXIST:
            return f"!{self.key}"
        if self.operator in _SINGLE_VALUE_OPERATORS:
            return f"{self.key}{self.operator}{self.values[0]}"
        return f"{self.key} {self.operator} ({','.join(self.values)})"


def _requirement_sort_key(req: Requirement) -> tuple[str, str, tuple[str, ...]]:
    return (req.key, req.operator, req.values)


@dataclass(frozen=True)
class LabelSelector:
    """A conjunction (AND) of requirements; empty means "match everything"."""

    requirements: tuple[Requirement, ...] = ()

    def __post_init__(self) -> None:
        # Sorting gives one canonical order regardless of how the selector was
        # written, so equality and __str__ are stable (Kubernetes sorts by key).
        object.__setattr__(
            self, "requirements", tuple(sorted(self.requirements, key=_requirement_sort_key))
        )

    @property
    def empty(self) -> bool:
        return not self.requirements

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(req.matches(labels) for req in self.requirements)

    def __str__(self) -> str:
        return ",".join(str(req) for req in self.requirements)


# Token kinds for the label selector lexer.
_IDENT = "identifier"
_EOS = "end of string"
_KEYWORDS = {"in": IN, "notin": NOT_IN}
# Characters that end an identifier.  '<' and '>' are Kubernetes' Gt/Lt
# operators; they are recognised only to give a clear "unsupported" error.
_SPECIAL_CHARS = frozenset("=!(),<>")
# Identifiers and keywords may appear as values ("a=in" is a valid selector).
_VALUE_KINDS = frozenset({_IDENT, IN, NOT_IN})


class _Token(NamedTuple):
    kind: str
    text: str


def _describe(token: _Token) -> str:
    return "end of string" if token.kind == _EOS else f'"{token.text}"'


class _Fail:
    """Builds SelectorErrors that quote the whole selector being parsed."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __call__(self, reason: str) -> SelectorError:
        return SelectorError(f'invalid label selector "{self.text}": {reason}')


def _lex(text: str, fail: _Fail) -> list[_Token]:
    tokens: list[_Token] = []
    pos, end = 0, len(text)
    while pos < end:
        char = text[pos]
        if char.isspace():
            pos += 1
        elif text.startswith(("==", "!="), pos):
            tokens.append(_Token(text[pos : pos + 2], text[pos : pos + 2]))
            pos += 2
        elif char in "<>":
            raise fail(f'unsupported operator "{char}"')
        elif char in _SPECIAL_CHARS:
            tokens.append(_Token(char, char))
            pos += 1
        else:
            start = pos
            while pos < end and not text[pos].isspace() and text[pos] not in _SPECIAL_CHARS:
                pos += 1
            word = text[start:pos]
            tokens.append(_Token(_KEYWORDS.get(word, _IDENT), word))
    tokens.append(_Token(_EOS, ""))
    return tokens


class _LabelParser:
    def __init__(self, text: str) -> None:
        self.fail = _Fail(text)
        self.tokens = _lex(text, self.fail)
        self.pos = 0

    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def next(self) -> _Token:
        token = self.tokens[self.pos]
        # Never step past the final EOS token.
        if token.kind != _EOS:
            self.pos += 1
        return token

    def parse(self) -> LabelSelector:
        if self.peek().kind == _EOS:
            return LabelSelector()
        requirements = [self.requirement()]
        while True:
            token = self.next()
            if token.kind == _EOS:
                return LabelSelector(tuple(requirements))
            if token.kind != ",":
                raise self.fail(
                    f'unexpected {_describe(token)} after "{requirements[-1]}"; '
                    'expected "," or end of string'
                )
            if self.peek().kind == _EOS:
                raise self.fail('trailing ","; expected a requirement after it')
            requirements.append(self.requirement())

    def build(self, key: str, operator: str, values: tuple[str, ...] = ()) -> Requirement:
        operator = EQUALS if operator == "==" else operator
        problem = _requirement_problem(key, operator, values)
        if problem is not None:
            raise self.fail(problem)
        return Requirement(key, operator, values)

    def requirement(self) -> Requirement:
        token = self.next()
        if token.kind == "!":
            key = self.next()
            if key.kind != _IDENT:
                raise self.fail(f'expected a label key after "!", found {_describe(key)}')
            return self.build(key.text, DOES_NOT_EXIST)
        if token.kind != _IDENT:
            raise self.fail(f"expected a label key, found {_describe(token)}")
        key_text = token.text

        op = self.peek()
        if op.kind in (_EOS, ","):
            return self.build(key_text, EXISTS)
        if op.kind in ("=", "==", "!="):
            self.next()
            value = self.peek()
            if value.kind in _VALUE_KINDS:
                self.next()
                return self.build(key_text, op.kind, (value.text,))
            if value.kind in (_EOS, ","):
                # Kubernetes allows "a=" meaning "label a has the empty value".
                return self.build(key_text, op.kind, ("",))
            raise self.fail(
                f'expected a value after "{key_text}{op.text}", found {_describe(value)}'
            )
        if op.kind in (IN, NOT_IN):
            self.next()
            return self.build(key_text, op.kind, self.value_list(key_text, op.text))
        raise self.fail(
            f'unexpected {_describe(op)} after key "{key_text}"; '
            'expected "=", "==", "!=", "in", "notin", "," or end of string'
        )

    def value_list(self, key: str, op: str) -> tuple[str, ...]:
        opener = self.next()
        if opener.kind != "(":
            raise self.fail(f'expected "(" after "{key} {op}", found {_describe(opener)}')
        # Each comma-separated slot holds one value or nothing; an empty slot is
        # the empty string, so "()" is ("",) exactly as in Kubernetes.
        values: list[str] = []
        current: str | None = None
        while True:
            token = self.next()
            if token.kind in _VALUE_KINDS:
                if current is not None:
                    raise self.fail(
                        f'expected "," or ")" between values "{current}" and "{token.text}"'
                    )
                current = token.text
            elif token.kind == ",":
                values.append(current or "")
                current = None
            elif token.kind == ")":
                values.append(current or "")
                return tuple(values)
            elif token.kind == _EOS:
                raise self.fail('missing ")"')
            else:
                raise self.fail(f'unexpected {_describe(token)} in value list of "{key}"')


def parse_label_selector(text: str) -> LabelSelector:
    """Parse the Kubernetes string form of a label selector.

    Supports ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``, ``k notin (a)``,
    ``k`` (exists) and ``!k`` (does not exist), joined by commas.  An empty
    or all-whitespace string is the empty selector, which matches everything.
    """
    if not isinstance(text, str):
        raise SelectorError(f"label selector must be a string, not {type(text).__name__}")
    return _LabelParser(text).parse()


def selector_from_match(
    match_labels: Mapping[str, str],
    match_expressions: Iterable[tuple[str, str, Sequence[str]]],
) -> LabelSelector:
    """Build a selector from the structured ``matchLabels``/``matchExpressions``.

    Validation follows Kubernetes: ``In``/``NotIn`` need at least one value,
    ``Exists``/``DoesNotExist`` must have none.  Errors name the offending
    field path (``matchExpressions[1].values``) so they point at the manifest.
    """

    def fail(path: str, reason: str) -> SelectorError:
        return SelectorError(f"invalid label selector: {path}: {reason}")

    requirements: list[Requirement] = []
    for key, value in match_labels.items():
        problem = _requirement_problem(key, EQUALS, (value,))
        if problem is not None:
            raise fail(f"matchLabels[{key}]", problem)
        requirements.append(Requirement(key, EQUALS, (value,)))

    for index, expression in enumerate(match_expressions):
        path = f"matchExpressions[{index}]"
        try:
            key, operator, raw_values = expression
        except (TypeError, ValueError):
            raise fail(path, "must be a (key, operator, values) triple") from None
        if operator not in _MATCH_OPERATORS:
            supported = ", ".join(f'"{name}"' for name in _MATCH_OPERATORS)
            raise fail(
                f"{path}.operator", f'unsupported value "{operator}": supported values: {supported}'
            )
        if isinstance(raw_values, str):
            raise fail(f"{path}.values", "must be a list of strings, not a string")
        values = tuple(raw_values)
        if operator in ("In", "NotIn") and not values:
            raise fail(f"{path}.values", "must be specified when `operator` is 'In' or 'NotIn'")
        if operator in ("Exists", "DoesNotExist") and values:
            raise fail(
                f"{path}.values",
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )
        key_errors = naming.label_key(key)
        if key_errors:
            raise fail(f"{path}.key", f'invalid label key "{key}": {"; ".join(key_errors)}')
        for value_index, value in enumerate(values):
            value_errors = naming.label_value(value)
            if value_errors:
                raise fail(
                    f"{path}.values[{value_index}]",
                    f'invalid label value "{value}": {"; ".join(value_errors)}',
                )
        requirements.append(Requirement(key, _MATCH_OPERATORS[operator], values))

    return LabelSelector(tuple(requirements))


# --------------------------------------------------------------------------
# Field selectors
# --------------------------------------------------------------------------

_FIELD_OPERATORS = frozenset({EQUALS, NOT_EQUALS})
# Checked in this order at each position so "!=" and "==" win over "=".
_FIELD_TERM_OPERATORS = ("!=", "==", "=")
# Characters that must be backslash-escaped inside a field selector value.
_FIELD_ESCAPED = frozenset("\\,=")


class FieldTerm(NamedTuple):
    """One ``field op value`` test; ``op`` is ``"="`` or ``"!="``."""

    field: str
    op: str
    value: str


def _escape_field_value(value: str) -> str:
    return "".join("\\" + char if char in _FIELD_ESCAPED else char for char in value)


@dataclass(frozen=True)
class FieldSelector:
    """A conjunction of field equality tests; empty matches everything."""

    terms: tuple[FieldTerm, ...] = ()

    def __post_init__(self) -> None:
        terms: list[FieldTerm] = []
        for raw in self.terms:
            field, op, value = raw
            op = EQUALS if op == "==" else op
            if op not in _FIELD_OPERATORS:
                raise SelectorError(f'unsupported field selector operator "{op}"')
            terms.append(FieldTerm(field, op, value))
        object.__setattr__(self, "terms", tuple(terms))

    @property
    def empty(self) -> bool:
        return not self.terms

    def matches(self, fields: Mapping[str, str]) -> bool:
        """Evaluate against an object's selectable fields.

        A field missing from ``fields`` reads as the empty string, as in
        Kubernetes, so ``spec.nodeName=`` selects unscheduled pods.
        """
        for term in self.terms:
            actual = fields.get(term.field, "")
            if (actual == term.value) != (term.op == EQUALS):
                return False
        return True

    def exact_value(self, field: str) -> str | None:
        """The value ``field`` is pinned to with ``=``, else None.

        Lets a store answer ``spec.nodeName=n1`` from an index and then apply
        :meth:`matches` for the remaining terms.
        """
        for term in self.terms:
            if term.field == field and term.op == EQUALS:
                return term.value
        return None

    def __str__(self) -> str:
        return ",".join(f"{t.field}{t.op}{_escape_field_value(t.value)}" for t in self.terms)


def _split_unescaped_commas(text: str) -> list[str]:
    parts: list[str] = []
    start = 0
    pos = 0
    while pos < len(text):
        if text[pos] == "\\":
            pos += 2  # skip the escaped character, whatever it is
            continue
        if text[pos] == ",":
            parts.append(text[start:pos])
            start = pos + 1
        pos += 1
    parts.append(text[start:])
    return parts


def _unescape_field_value(value: str, fail: _FieldFail) -> str:
    out: list[str] = []
    pos = 0
    while pos < len(value):
        char = value[pos]
        if char == "\\":
            if pos + 1 >= len(value):
                raise fail(f'value "{value}" ends with an unfinished escape "\\"')
            escaped = value[pos + 1]
            if escaped not in _FIELD_ESCAPED:
                raise fail(f'invalid escape sequence "\\{escaped}" in value "{value}"')
            out.append(escaped)
            pos += 2
            continue
        if char in ",=":
            # An unescaped '=' means the term was ambiguous ("a=b=c").
            raise fail(f'value "{value}" contains an unescaped "{char}"')
        out.append(char)
        pos += 1
    return "".join(out)


class _FieldFail:
    def __init__(self, text: str) -> None:
        self.text = text

    def __call__(self, reason: str) -> SelectorError:
        return SelectorError(f'invalid field selector "{self.text}": {reason}')


def parse_field_selector(text: str, allowed: Collection[str]) -> FieldSelector:
    """Parse ``field=value,field!=value`` against the fields a resource supports.

    Whitespace around fields and values is ignored.  Empty terms (from a stray
    comma) are skipped, as Kubernetes does.  Values may escape ``\\``, ``,``
    and ``=`` with a backslash.
    """
    if not isinstance(text, str):
        raise SelectorError(f"field selector must be a string, not {type(text).__name__}")
    fail = _FieldFail(text)
    terms: list[FieldTerm] = []
    for raw_term in _split_unescaped_commas(text):
        term = raw_term.strip()
        if not term:
            continue
        split = _split_field_term(term)
        if split is None:
            raise fail(f'term "{term}" has no operator; expected "=", "==" or "!="')
        field, op, raw_value = split
        field = field.strip()
        if not field:
            raise fail(f'term "{term}" is missing a field name')
        if field not in allowed:
            # Exact wording of the Kubernetes API server error.
            raise SelectorError(f"field label not supported: {field}")
        value = _unescape_field_value(raw_value.strip(), fail)
        terms.append(FieldTerm(field, op, value))
    return FieldSelector(tuple(terms))


def _split_field_term(term: str) -> tuple[str, str, str] | None:
    # The first operator occurrence splits field from value; field names never
    # contain operator characters, so anything after it belongs to the value.
    for pos in range(len(term)):
        for op in _FIELD_TERM_OPERATORS:
            if term.startswith(op, pos):
                return term[:pos], op, term[pos + len(op) :]
    return None
