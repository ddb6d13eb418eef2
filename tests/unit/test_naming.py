"""Unit tests for kubeling.api.naming (Kubernetes name/label validation)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from kubeling.api import naming

DNS_LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
    "and must start and end with an alphanumeric character"
)
DNS_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
    "'-' or '.', and must start and end with an alphanumeric character"
)

# --------------------------------------------------------------------------
# dns1123_label
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["a", "0", "abc", "a-b", "a--b", "123", "123-abc", "my-name", "a" * 63, "a1-2b"],
)
def test_dns1123_label_valid(value: str) -> None:
    assert naming.dns1123_label(value) == []


@pytest.mark.parametrize(
    "value",
    [
        "",
        "-a",
        "a-",
        "-",
        "A",
        "aBc",
        "a.b",
        "a_b",
        "a b",
        "a/b",
        "é",
        "a\n",
        "\uff41",  # full-width letter a
    ],
)
def test_dns1123_label_invalid_chars(value: str) -> None:
    errors = naming.dns1123_label(value)
    assert len(errors) == 1
    assert errors[0].startswith(DNS_LABEL_MSG)
    assert "regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?'" in errors[0]


def test_dns1123_label_too_long() -> None:
    assert naming.dns1123_label("a" * 64) == ["must be no more than 63 characters"]


def test_dns1123_label_too_long_and_bad_chars_reports_both() -> None:
    errors = naming.dns1123_label("A" * 64)
    assert errors[0] == "must be no more than 63 characters"
    assert errors[1].startswith(DNS_LABEL_MSG)
    assert len(errors) == 2


# --------------------------------------------------------------------------
# dns1123_subdomain
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "a",
        "example.com",
        "a.b.c",
        "a-b.c-d",
        "0.1.2",
        "kubernetes.io",
        ("a" * 63 + ".") * 3 + "a" * 61,  # exactly 253
    ],
)
def test_dns1123_subdomain_valid(value: str) -> None:
    assert naming.dns1123_subdomain(value) == []


@pytest.mark.parametrize(
    "value",
    ["", ".", "a.", ".a", "a..b", "-a.b", "a-.b", "a.-b", "A.b", "a_b.c", "a b", "a.b\n"],
)
def test_dns1123_subdomain_invalid(value: str) -> None:
    errors = naming.dns1123_subdomain(value)
    assert len(errors) == 1
    assert errors[0].startswith(DNS_SUBDOMAIN_MSG)
    assert "'example.com'" in errors[0]


def test_dns1123_subdomain_too_long() -> None:
    value = ("a" * 63 + ".") * 3 + "a" * 62  # 254
    assert naming.dns1123_subdomain(value) == ["must be no more than 253 characters"]


# --------------------------------------------------------------------------
# label_key / annotation_key
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "a",
        "app",
        "MyName",
        "my.name",
        "my_name",
        "123-abc",
        "a-b_c.d",
        "example.com/MyName",
        "kubernetes.io/hostname",
        "app.kubernetes.io/name",
        "node-role.kubernetes.io/control-plane",
        "a" * 63,
        "example.com/" + "a" * 63,
    ],
)
@pytest.mark.parametrize("validator", [naming.label_key, naming.annotation_key])
def test_label_key_valid(validator: Callable[[str], list[str]], value: str) -> None:
    assert validator(value) == []


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", "name part must be non-empty"),
        ("-a", "name part must consist of alphanumeric characters"),
        ("a-", "name part must consist of alphanumeric characters"),
        ("_a", "name part must consist of alphanumeric characters"),
        ("a b", "name part must consist of alphanumeric characters"),
        ("a:b", "name part must consist of alphanumeric characters"),
        ("é", "name part must consist of alphanumeric characters"),
        ("a\n", "name part must consist of alphanumeric characters"),
        ("example.com/", "name part must be non-empty"),
        ("/a", "prefix part must be non-empty"),
        ("Example.com/a", "prefix part a lowercase RFC 1123 subdomain"),
        ("exa_mple.com/a", "prefix part a lowercase RFC 1123 subdomain"),
        ("a/b/c", "a qualified name must consist of alphanumeric characters"),
        ("a" * 64, "name part must be no more than 63 characters"),
        ("x/" + "a" * 64, "name part must be no more than 63 characters"),
        ("a" * 254 + "/a", "prefix part must be no more than 253 characters"),
    ],
)
def test_label_key_invalid(value: str, fragment: str) -> None:
    errors = naming.label_key(value)
    assert errors, value
    assert any(fragment in e for e in errors), errors
    assert naming.annotation_key(value) == errors


def test_label_key_slashes_error_mentions_prefix_shape() -> None:
    (error,) = naming.label_key("a/b/c")
    assert "with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')" in error


def test_label_key_reports_prefix_and_name_errors_together() -> None:
    errors = naming.label_key("Bad_Prefix/-bad-")
    assert any(e.startswith("prefix part ") for e in errors)
    assert any(e.startswith("name part ") for e in errors)


def test_label_key_empty_name_reports_non_empty_and_regex() -> None:
    errors = naming.label_key("")
    assert errors[0] == "name part must be non-empty"


# --------------------------------------------------------------------------
# label_value
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["", "a", "MyValue", "my_value", "my.value", "12345", "a-b", "A" * 63]
)
def test_label_value_valid(value: str) -> None:
    assert naming.label_value(value) == []


@pytest.mark.parametrize(
    "value", ["-a", "a-", ".a", "a.", "_a", "a b", "a/b", "a=b", "a,b", "é", "a\n", " "]
)
def test_label_value_invalid(value: str) -> None:
    errors = naming.label_value(value)
    assert len(errors) == 1
    assert errors[0].startswith(
        "a valid label must be an empty string or consist of alphanumeric characters, "
        "'-', '_' or '.', and must start and end with an alphanumeric character"
    )


def test_label_value_too_long() -> None:
    assert naming.label_value("a" * 64) == ["must be no more than 63 characters"]


# --------------------------------------------------------------------------
# port_name
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["http", "https", "h2c", "dns-tcp", "a", "a1", "1a", "metrics-9090", "a" * 15]
)
def test_port_name_valid(value: str) -> None:
    assert naming.port_name(value) == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a" * 16, ["must be no more than 15 characters"]),
        (
            "HTTP",
            [
                "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)",
                "must contain at least one letter (a-z)",
            ],
        ),
        (
            "http_alt",
            [
                "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)",
            ],
        ),
        ("8080", ["must contain at least one letter (a-z)"]),
        ("a--b", ["must not contain consecutive hyphens"]),
        ("-http", ["must not begin or end with a hyphen"]),
        ("http-", ["must not begin or end with a hyphen"]),
        (
            "",
            [
                "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)",
                "must contain at least one letter (a-z)",
            ],
        ),
        (
            "-",
            [
                "must contain at least one letter (a-z)",
                "must not begin or end with a hyphen",
            ],
        ),
        (
            "http\n",
            [
                "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)",
            ],
        ),
    ],
)
def test_port_name_invalid(value: str, expected: list[str]) -> None:
    assert naming.port_name(value) == expected


# --------------------------------------------------------------------------
# c_identifier (relaxed environment variable names)
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["PATH", "_x", "a1", "1a", "my.setting", "JAVA-OPTS", "a b", "~!@#$%^&*()", " ", "<>"],
)
def test_env_var_name_valid(value: str) -> None:
    assert naming.c_identifier(value) == []


@pytest.mark.parametrize("value", ["A=B", "=", "tab\there", "new\nline", "é", "\x7f", "\x00"])
def test_env_var_name_invalid(value: str) -> None:
    assert naming.c_identifier(value) == [
        "a valid environment variable name must consist only of printable ASCII characters "
        "other than '='"
    ]


def test_env_var_name_empty() -> None:
    assert naming.c_identifier("") == ["must be non-empty"]


# --------------------------------------------------------------------------
# shared behaviour
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "validator",
    [
        naming.dns1123_label,
        naming.dns1123_subdomain,
        naming.label_key,
        naming.annotation_key,
        naming.label_value,
        naming.port_name,
        naming.c_identifier,
    ],
)
@pytest.mark.parametrize("value", [None, 1, b"abc"])
def test_non_string_is_an_error_not_a_crash(
    validator: Callable[[str], list[str]], value: object
) -> None:
    assert validator(value) == ["must be a string"]  # type: ignore[arg-type]


def test_max_len_error_phrase() -> None:
    assert naming.max_len_error(63) == "must be no more than 63 characters"
