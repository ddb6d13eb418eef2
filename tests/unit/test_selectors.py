"""Unit tests for kubeling.api.selectors (label and field selectors)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest

from kubeling.api.selectors import (
    FieldSelector,
    FieldTerm,
    LabelSelector,
    Requirement,
    SelectorError,
    parse_field_selector,
    parse_label_selector,
    selector_from_match,
)

WEB = {"app": "web", "tier": "fe", "env": "prod"}
DB = {"app": "db", "tier": "be"}
BARE: dict[str, str] = {}

# --------------------------------------------------------------------------
# Requirement
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "operator", "values", "labels", "expected"),
    [
        ("app", "=", ("web",), WEB, True),
        ("app", "=", ("web",), DB, False),
        ("app", "=", ("web",), BARE, False),
        ("app", "!=", ("web",), WEB, False),
        ("app", "!=", ("web",), DB, True),
        ("app", "!=", ("web",), BARE, True),  # absent key matches !=
        ("app", "in", ("web", "db"), WEB, True),
        ("app", "in", ("web", "db"), DB, True),
        ("app", "in", ("api",), WEB, False),
        ("app", "in", ("web",), BARE, False),
        ("app", "notin", ("web",), WEB, False),
        ("app", "notin", ("web",), DB, True),
        ("app", "notin", ("web",), BARE, True),  # absent key matches notin
        ("env", "exists", (), WEB, True),
        ("env", "exists", (), DB, False),
        ("env", "!", (), WEB, False),
        ("env", "!", (), DB, True),
        ("env", "!", (), BARE, True),
        ("app", "=", ("",), {"app": ""}, True),
        ("app", "=", ("",), BARE, False),
    ],
)
def test_requirement_matches(
    key: str, operator: str, values: tuple[str, ...], labels: dict[str, str], expected: bool
) -> None:
    assert Requirement(key, operator, values).matches(labels) is expected


def test_requirement_normalises_double_equals_and_sorts_set_values() -> None:
    assert Requirement("a", "==", ("b",)) == Requirement("a", "=", ("b",))
    req = Requirement("a", "in", ("z", "x", "z", "y"))
    assert req.values == ("x", "y", "z")
    # lists are accepted and frozen into tuples
    assert Requirement("a", "in", ["b"]).values == ("b",)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("req", "text"),
    [
        (Requirement("a", "=", ("b",)), "a=b"),
        (Requirement("a", "!=", ("b",)), "a!=b"),
        (Requirement("a", "in", ("y", "x")), "a in (x,y)"),
        (Requirement("a", "notin", ("x",)), "a notin (x)"),
        (Requirement("a", "exists"), "a"),
        (Requirement("a", "!"), "!a"),
        (Requirement("example.com/a", "=", ("",)), "example.com/a="),
    ],
)
def test_requirement_str(req: Requirement, text: str) -> None:
    assert str(req) == text


@pytest.mark.parametrize(
    ("key", "operator", "values", "fragment"),
    [
        ("a", "~", ("b",), 'unsupported operator "~"'),
        ("a", "In", ("b",), 'unsupported operator "In"'),
        ("-a", "=", ("b",), 'invalid label key "-a"'),
        ("", "exists", (), 'invalid label key ""'),
        ("a", "=", ("-b",), 'invalid label value "-b" for key "a"'),
        ("a", "in", ("ok", "bad value"), 'invalid label value "bad value"'),
        ("a", "=", (), "needs exactly one value"),
        ("a", "!=", ("b", "c"), "needs exactly one value"),
        ("a", "in", (), "needs at least one value"),
        ("a", "notin", (), "needs at least one value"),
        ("a", "exists", ("b",), "takes no values"),
        ("a", "!", ("b",), "takes no values"),
    ],
)
def test_requirement_invalid(
    key: str, operator: str, values: tuple[str, ...], fragment: str
) -> None:
    with pytest.raises(SelectorError, match=None) as excinfo:
        Requirement(key, operator, values)
    assert fragment in str(excinfo.value)


def test_requirement_rejects_bare_string_values() -> None:
    with pytest.raises(SelectorError, match="must be a sequence, not a string"):
        Requirement("a", "in", "abc")  # type: ignore[arg-type]


def test_requirement_is_frozen_and_hashable() -> None:
    req = Requirement("a", "=", ("b",))
    with pytest.raises(AttributeError):
        req.key = "c"  # type: ignore[misc]
    assert len({req, Requirement("a", "==", ("b",))}) == 1


# --------------------------------------------------------------------------
# LabelSelector basics
# --------------------------------------------------------------------------


def test_empty_selector_matches_everything() -> None:
    sel = LabelSelector()
    assert sel.empty
    assert str(sel) == ""
    assert sel.matches(WEB)
    assert sel.matches(BARE)


def test_selector_is_conjunction() -> None:
    sel = LabelSelector((Requirement("app", "=", ("web",)), Requirement("env", "exists")))
    assert not sel.empty
    assert sel.matches(WEB)
    assert not sel.matches(DB)
    assert not sel.matches({"app": "web"})


def test_selector_requirements_are_sorted_canonically() -> None:
    a = LabelSelector((Requirement("z", "exists"), Requirement("a", "=", ("1",))))
    b = LabelSelector((Requirement("a", "=", ("1",)), Requirement("z", "exists")))
    assert a == b
    assert str(a) == "a=1,z"
    assert hash(a) == hash(b)


# --------------------------------------------------------------------------
# parse_label_selector: valid input
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("", ""),
        ("   ", ""),
        ("a=b", "a=b"),
        ("a==b", "a=b"),
        ("a!=b", "a!=b"),
        ("a in (x,y)", "a in (x,y)"),
        ("a in (y,x,y)", "a in (x,y)"),
        ("a notin (x)", "a notin (x)"),
        ("a", "a"),
        ("!a", "!a"),
        ("a=", "a="),
        ("a=,b", "a=,b"),
        ("a!=", "a!="),
        ("a=in", "a=in"),
        ("a=notin", "a=notin"),
        ("a in (in,notin)", "a in (in,notin)"),
        ("a in(x)", "a in (x)"),
        ("a in ()", "a in ()"),  # Kubernetes reads "()" as the empty value
        ("a in (x,)", "a in (,x)"),
        ("a in (,x)", "a in (,x)"),
        ("a in (x,,y)", "a in (,x,y)"),
        (" a = b , c ", "a=b,c"),
        ("\ta\t!=\tb\n", "a!=b"),
        ("a = b,  ! c", "a=b,!c"),
        ("a in ( x , y )", "a in (x,y)"),
        ("z=1,a=2", "a=2,z=1"),
        ("app=web,tier in (fe,be),!canary,env", "app=web,!canary,env,tier in (be,fe)"),
        ("example.com/app=web", "example.com/app=web"),
        ("app.kubernetes.io/name in (nginx)", "app.kubernetes.io/name in (nginx)"),
        ("A_b.c-D=E_f.g-H", "A_b.c-D=E_f.g-H"),
        ("a=1,a!=2", "a!=2,a=1"),  # same key: ordered by operator
    ],
)
def test_parse_label_selector_canonical(text: str, canonical: str) -> None:
    sel = parse_label_selector(text)
    assert str(sel) == canonical
    # The canonical form parses back to an equal selector.
    assert parse_label_selector(str(sel)) == sel


def test_parse_empty_is_empty_selector() -> None:
    assert parse_label_selector("") == LabelSelector()
    assert parse_label_selector("").empty


def test_parse_produces_expected_requirements() -> None:
    sel = parse_label_selector("app=web, tier notin (be), !canary, env, x!=y, k in (a,b)")
    assert set(sel.requirements) == {
        Requirement("app", "=", ("web",)),
        Requirement("tier", "notin", ("be",)),
        Requirement("canary", "!"),
        Requirement("env", "exists"),
        Requirement("x", "!=", ("y",)),
        Requirement("k", "in", ("a", "b")),
    }


@pytest.mark.parametrize(
    ("text", "labels", "expected"),
    [
        ("app=web", WEB, True),
        ("app=web", DB, False),
        ("app==web", WEB, True),
        ("app!=web", DB, True),
        ("app!=web", BARE, True),
        ("app in (web,db)", DB, True),
        ("app notin (web)", BARE, True),
        ("app notin (web)", WEB, False),
        ("env", WEB, True),
        ("env", DB, False),
        ("!env", DB, True),
        ("!env", WEB, False),
        ("app=web,env=prod", WEB, True),
        ("app=web,env=dev", WEB, False),
        ("app in (web),tier notin (be),!canary", WEB, True),
        ("app in (web),tier notin (be),!canary", {**WEB, "canary": "1"}, False),
        ("app=", {"app": ""}, True),
        ("app=", WEB, False),
        ("a in ()", {"a": ""}, True),
        ("a in ()", {"a": "x"}, False),
        ("", BARE, True),
    ],
)
def test_parse_then_match(text: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_label_selector(text).matches(labels) is expected


# --------------------------------------------------------------------------
# parse_label_selector: invalid input
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("a in (b", 'missing ")"'),
        ("a in (b,", 'missing ")"'),
        ("a in (", 'missing ")"'),
        ("a notin (x,y", 'missing ")"'),
        ("a in x", 'expected "(" after "a in", found "x"'),
        ("a in", 'expected "(" after "a in", found end of string'),
        ("a in (b c)", 'expected "," or ")" between values "b" and "c"'),
        ("a in (b))", 'unexpected ")" after "a in (b)"'),
        ("a in ((b)", 'unexpected "(" in value list of "a"'),
        ("a in (=)", 'unexpected "=" in value list of "a"'),
        ("a,", 'trailing ","'),
        ("a=b,", 'trailing ","'),
        (",", 'expected a label key, found ","'),
        (",a", 'expected a label key, found ","'),
        ("a,,b", 'expected a label key, found ","'),
        ("=b", 'expected a label key, found "="'),
        ("!=b", 'expected a label key, found "!="'),
        ("in=x", 'expected a label key, found "in"'),
        ("notin", 'expected a label key, found "notin"'),
        ("(a)", 'expected a label key, found "("'),
        ("!", 'expected a label key after "!", found end of string'),
        ("!!a", 'expected a label key after "!", found "!"'),
        ("!a=b", 'unexpected "=" after "!a"'),
        ("!a in (b)", 'unexpected "in" after "!a"'),
        ("a b", 'unexpected "b" after key "a"'),
        ("a!", 'unexpected "!" after key "a"'),
        ("a=b c", 'unexpected "c" after "a=b"'),
        ("a=b=c", 'unexpected "=" after "a=b"'),
        ("a=(b)", 'expected a value after "a=", found "("'),
        ("a==!b", 'expected a value after "a==", found "!"'),
        ("a<1", 'unsupported operator "<"'),
        ("a>1", 'unsupported operator ">"'),
        ("a gt 1", 'unexpected "gt" after key "a"'),
        ("-a=b", 'invalid label key "-a": name part must consist of alphanumeric characters'),
        ("a/b/c", 'invalid label key "a/b/c"'),
        ("Bad.Prefix/a", 'invalid label key "Bad.Prefix/a": prefix part'),
        ("a=-b", 'invalid label value "-b" for key "a"'),
        ("a in (ok,-b)", 'invalid label value "-b" for key "a"'),
        ("a=" + "v" * 64, "must be no more than 63 characters"),
        ("k" * 64, "name part must be no more than 63 characters"),
        ("a=b;c=d", 'invalid label value "b;c"'),
        ("a=é", 'invalid label value "é"'),
    ],
)
def test_parse_label_selector_invalid(text: str, reason: str) -> None:
    with pytest.raises(SelectorError) as excinfo:
        parse_label_selector(text)
    message = str(excinfo.value)
    assert message.startswith(f'invalid label selector "{text}": ')
    assert reason in message


def test_parse_label_selector_exact_missing_paren_message() -> None:
    with pytest.raises(SelectorError) as excinfo:
        parse_label_selector("a in (b")
    assert str(excinfo.value) == 'invalid label selector "a in (b": missing ")"'


@pytest.mark.parametrize("value", [None, 1, b"a=b", ["a=b"]])
def test_parse_label_selector_rejects_non_str(value: object) -> None:
    with pytest.raises(SelectorError, match="must be a string"):
        parse_label_selector(value)  # type: ignore[arg-type]


def test_selector_error_is_value_error() -> None:
    with pytest.raises(ValueError):
        parse_label_selector("a in (")


# --------------------------------------------------------------------------
# selector_from_match
# --------------------------------------------------------------------------


def test_from_match_empty_matches_everything() -> None:
    sel = selector_from_match({}, [])
    assert sel.empty
    assert sel.matches(WEB)


def test_from_match_labels_only() -> None:
    sel = selector_from_match({"tier": "fe", "app": "web"}, [])
    assert sel == parse_label_selector("app=web,tier=fe")
    assert sel.matches(WEB)
    assert not sel.matches(DB)


@pytest.mark.parametrize(
    ("expressions", "equivalent"),
    [
        ([("app", "In", ["web", "db"])], "app in (db,web)"),
        ([("app", "NotIn", ("web",))], "app notin (web)"),
        ([("env", "Exists", [])], "env"),
        ([("env", "DoesNotExist", ())], "!env"),
        (
            [("app", "In", ["web"]), ("env", "Exists", []), ("canary", "DoesNotExist", [])],
            "app in (web),env,!canary",
        ),
    ],
)
def test_from_match_expressions(
    expressions: list[tuple[str, str, Sequence[str]]], equivalent: str
) -> None:
    assert selector_from_match({}, expressions) == parse_label_selector(equivalent)


def test_from_match_combines_labels_and_expressions() -> None:
    sel = selector_from_match({"app": "web"}, [("env", "In", ["prod", "staging"])])
    assert str(sel) == "app=web,env in (prod,staging)"
    assert sel.matches(WEB)
    assert not sel.matches({"app": "web", "env": "dev"})
    assert not sel.matches({"env": "prod"})


def test_from_match_accepts_generator() -> None:
    exprs: Iterator[tuple[str, str, Sequence[str]]] = ((k, "Exists", ()) for k in ["a", "b"])
    assert str(selector_from_match({}, exprs)) == "a,b"


@pytest.mark.parametrize(
    ("labels", "expressions", "message"),
    [
        (
            {},
            [("app", "In", [])],
            "invalid label selector: matchExpressions[0].values: "
            "must be specified when `operator` is 'In' or 'NotIn'",
        ),
        (
            {},
            [("env", "Exists", []), ("app", "NotIn", ())],
            "invalid label selector: matchExpressions[1].values: "
            "must be specified when `operator` is 'In' or 'NotIn'",
        ),
        (
            {},
            [("app", "Exists", ["x"])],
            "invalid label selector: matchExpressions[0].values: "
            "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
        ),
        (
            {},
            [("app", "DoesNotExist", ["x"])],
            "invalid label selector: matchExpressions[0].values: "
            "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
        ),
        (
            {},
            [("app", "in", ["x"])],
            'invalid label selector: matchExpressions[0].operator: unsupported value "in": '
            'supported values: "In", "NotIn", "Exists", "DoesNotExist"',
        ),
        (
            {},
            [("app", "In", "web")],
            "invalid label selector: matchExpressions[0].values: "
            "must be a list of strings, not a string",
        ),
    ],
)
def test_from_match_invalid_exact_messages(
    labels: dict[str, str],
    expressions: list[tuple[str, str, Sequence[str]]],
    message: str,
) -> None:
    with pytest.raises(SelectorError) as excinfo:
        selector_from_match(labels, expressions)
    assert str(excinfo.value) == message


@pytest.mark.parametrize(
    ("labels", "expressions", "prefix"),
    [
        ({"-bad": "x"}, [], 'invalid label selector: matchLabels[-bad]: invalid label key "-bad"'),
        (
            {"app": "bad value"},
            [],
            'invalid label selector: matchLabels[app]: invalid label value "bad value"',
        ),
        (
            {},
            [("bad key", "Exists", [])],
            'invalid label selector: matchExpressions[0].key: invalid label key "bad key"',
        ),
        (
            {},
            [("app", "In", ["ok", "-bad"])],
            'invalid label selector: matchExpressions[0].values[1]: invalid label value "-bad"',
        ),
        (
            {},
            [("app", "In")],
            "invalid label selector: matchExpressions[0]: must be a (key, operator, values) triple",
        ),
    ],
)
def test_from_match_invalid_names_the_path(
    labels: dict[str, str], expressions: list[object], prefix: str
) -> None:
    with pytest.raises(SelectorError) as excinfo:
        selector_from_match(labels, expressions)  # type: ignore[arg-type]
    assert str(excinfo.value).startswith(prefix)


# --------------------------------------------------------------------------
# Field selectors
# --------------------------------------------------------------------------

POD_FIELDS = ("metadata.name", "metadata.namespace", "spec.nodeName", "status.phase")


@pytest.mark.parametrize(
    ("text", "terms"),
    [
        ("", ()),
        ("   ", ()),
        (",", ()),
        ("spec.nodeName=n1", (FieldTerm("spec.nodeName", "=", "n1"),)),
        ("spec.nodeName==n1", (FieldTerm("spec.nodeName", "=", "n1"),)),
        ("spec.nodeName!=n1", (FieldTerm("spec.nodeName", "!=", "n1"),)),
        ("spec.nodeName=", (FieldTerm("spec.nodeName", "=", ""),)),
        (" spec.nodeName = n1 ", (FieldTerm("spec.nodeName", "=", "n1"),)),
        (
            "spec.nodeName=n1,status.phase!=Running",
            (FieldTerm("spec.nodeName", "=", "n1"), FieldTerm("status.phase", "!=", "Running")),
        ),
        (
            "spec.nodeName=n1,,status.phase=Pending,",
            (FieldTerm("spec.nodeName", "=", "n1"), FieldTerm("status.phase", "=", "Pending")),
        ),
        ("metadata.name=a\\,b", (FieldTerm("metadata.name", "=", "a,b"),)),
        ("metadata.name=a\\=b", (FieldTerm("metadata.name", "=", "a=b"),)),
        ("metadata.name=a\\\\b", (FieldTerm("metadata.name", "=", "a\\b"),)),
        ("metadata.name=x!y", (FieldTerm("metadata.name", "=", "x!y"),)),
    ],
)
def test_parse_field_selector(text: str, terms: tuple[FieldTerm, ...]) -> None:
    sel = parse_field_selector(text, POD_FIELDS)
    assert sel.terms == terms
    assert sel.empty is (not terms)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("spec.foo=bar", "field label not supported: spec.foo"),
        ("spec.nodeName=n1,spec.foo=bar", "field label not supported: spec.foo"),
        ("metadata.labels=x", "field label not supported: metadata.labels"),
        ("Spec.nodeName=n1", "field label not supported: Spec.nodeName"),
    ],
)
def test_parse_field_selector_unknown_field(text: str, message: str) -> None:
    with pytest.raises(SelectorError) as excinfo:
        parse_field_selector(text, POD_FIELDS)
    assert str(excinfo.value) == message


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("spec.nodeName", 'term "spec.nodeName" has no operator'),
        ("spec.nodeName n1", 'term "spec.nodeName n1" has no operator'),
        ("spec.nodeName<n1", "has no operator"),
        ("=n1", 'term "=n1" is missing a field name'),
        ("!=n1", "is missing a field name"),
        ("spec.nodeName=a=b", 'value "a=b" contains an unescaped "="'),
        ("spec.nodeName===b", 'value "=b" contains an unescaped "="'),
        ("spec.nodeName=a\\", 'ends with an unfinished escape "\\"'),
        ("spec.nodeName=a\\x", 'invalid escape sequence "\\x"'),
    ],
)
def test_parse_field_selector_bad_syntax(text: str, reason: str) -> None:
    with pytest.raises(SelectorError) as excinfo:
        parse_field_selector(text, POD_FIELDS)
    message = str(excinfo.value)
    assert message.startswith(f'invalid field selector "{text}": ')
    assert reason in message


def test_parse_field_selector_rejects_non_str() -> None:
    with pytest.raises(SelectorError, match="must be a string"):
        parse_field_selector(None, POD_FIELDS)  # type: ignore[arg-type]


def test_parse_field_selector_accepts_any_collection_of_allowed_fields() -> None:
    assert parse_field_selector("a=1", {"a"}).terms == (FieldTerm("a", "=", "1"),)
    assert parse_field_selector("a=1", frozenset({"a"})).exact_value("a") == "1"
    with pytest.raises(SelectorError):
        parse_field_selector("a=1", [])


POD = {"metadata.name": "web-1", "spec.nodeName": "n1", "status.phase": "Running"}


@pytest.mark.parametrize(
    ("text", "fields", "expected"),
    [
        ("", POD, True),
        ("spec.nodeName=n1", POD, True),
        ("spec.nodeName==n1", POD, True),
        ("spec.nodeName=n2", POD, False),
        ("spec.nodeName!=n2", POD, True),
        ("spec.nodeName!=n1", POD, False),
        ("spec.nodeName=n1,status.phase=Running", POD, True),
        ("spec.nodeName=n1,status.phase!=Running", POD, False),
        # A missing field reads as "" so "spec.nodeName=" finds unscheduled pods.
        ("spec.nodeName=", {"metadata.name": "p"}, True),
        ("spec.nodeName=", POD, False),
        ("spec.nodeName!=", POD, True),
        ("spec.nodeName!=n1", {"metadata.name": "p"}, True),
        ("spec.nodeName=n1", {}, False),
        ("metadata.name=a\\,b", {"metadata.name": "a,b"}, True),
    ],
)
def test_field_selector_matches(text: str, fields: dict[str, str], expected: bool) -> None:
    assert parse_field_selector(text, POD_FIELDS).matches(fields) is expected


@pytest.mark.parametrize(
    ("text", "field", "expected"),
    [
        ("spec.nodeName=n1", "spec.nodeName", "n1"),
        ("spec.nodeName==n1", "spec.nodeName", "n1"),
        ("status.phase=Running,spec.nodeName=n1", "spec.nodeName", "n1"),
        ("spec.nodeName=", "spec.nodeName", ""),
        ("spec.nodeName!=n1", "spec.nodeName", None),
        ("status.phase=Running", "spec.nodeName", None),
        ("", "spec.nodeName", None),
        ("spec.nodeName!=n2,spec.nodeName=n1", "spec.nodeName", "n1"),
    ],
)
def test_field_selector_exact_value(text: str, field: str, expected: str | None) -> None:
    assert parse_field_selector(text, POD_FIELDS).exact_value(field) == expected


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("", ""),
        ("spec.nodeName==n1", "spec.nodeName=n1"),
        (
            " spec.nodeName = n1 , status.phase != Running ",
            "spec.nodeName=n1,status.phase!=Running",
        ),
        ("metadata.name=a\\,b\\=c\\\\d", "metadata.name=a\\,b\\=c\\\\d"),
    ],
)
def test_field_selector_str_round_trips(text: str, canonical: str) -> None:
    sel = parse_field_selector(text, POD_FIELDS)
    assert str(sel) == canonical
    assert parse_field_selector(str(sel), POD_FIELDS) == sel


def test_field_selector_direct_construction() -> None:
    sel = FieldSelector((("spec.nodeName", "==", "n1"),))  # type: ignore[arg-type]
    assert sel.terms == (FieldTerm("spec.nodeName", "=", "n1"),)
    assert sel == parse_field_selector("spec.nodeName=n1", POD_FIELDS)
    assert FieldSelector().empty
    assert FieldSelector().matches({})
    with pytest.raises(SelectorError, match='unsupported field selector operator "in"'):
        FieldSelector((FieldTerm("a", "in", "b"),))
