"""Kubernetes name and label validation primitives.

Every function returns a list of human-readable error strings, empty when the
value is valid.  Returning all problems (instead of raising on the first) lets
API validation report every mistake in one response, like Kubernetes does, and
the phrasing follows Kubernetes' own messages so users can search for them.

Regexes are matched with ``fullmatch`` and spell out ``[0-9]`` / ``[a-z]``:
``re.match(...$)`` would accept a trailing newline, and ``\\d``/``\\w`` accept
non-ASCII digits and letters, neither of which Kubernetes allows.
"""

from __future__ import annotations

import re

__all__ = [
    "DNS1123_LABEL_MAX_LENGTH",
    "DNS1123_SUBDOMAIN_MAX_LENGTH",
    "LABEL_VALUE_MAX_LENGTH",
    "PORT_NAME_MAX_LENGTH",
    "QUALIFIED_NAME_MAX_LENGTH",
    "annotation_key",
    "c_identifier",
    "dns1123_label",
    "dns1123_subdomain",
    "label_key",
    "label_value",
    "max_len_error",
    "port_name",
]

DNS1123_LABEL_MAX_LENGTH = 63
DNS1123_SUBDOMAIN_MAX_LENGTH = 253
QUALIFIED_NAME_MAX_LENGTH = 63
LABEL_VALUE_MAX_LENGTH = 63
# IANA service names (RFC 6335) are at most 15 characters.
PORT_NAME_MAX_LENGTH = 15

_EMPTY = "must be non-empty"
_NOT_A_STRING = "must be a string"

_DNS1123_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_LABEL_RE = re.compile(_DNS1123_LABEL_FMT)
_DNS1123_LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters "
    "or '-', and must start and end with an alphanumeric character"
)

_DNS1123_SUBDOMAIN_FMT = rf"{_DNS1123_LABEL_FMT}(\.{_DNS1123_LABEL_FMT})*"
_DNS1123_SUBDOMAIN_RE = re.compile(_DNS1123_SUBDOMAIN_FMT)
_DNS1123_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
    "'-' or '.', and must start and end with an alphanumeric character"
)

_QUALIFIED_NAME_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_QUALIFIED_NAME_RE = re.compile(_QUALIFIED_NAME_FMT)
_QUALIFIED_NAME_MSG = (
    "must consist of alphanumeric characters, '-', '_' or '.', "
    "and must start and end with an alphanumeric character"
)

_LABEL_VALUE_FMT = f"({_QUALIFIED_NAME_FMT})?"
_LABEL_VALUE_RE = re.compile(_LABEL_VALUE_FMT)
_LABEL_VALUE_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, "
    "'-', '_' or '.', and must start and end with an alphanumeric character"
)

_PORT_NAME_CHARSET_RE = re.compile("[-a-z0-9]+")
_PORT_NAME_LETTER_RE = re.compile("[a-z]")

# Kubernetes' relaxed env var rule: any printable ASCII character except '='
# (space 0x20 .. '<' 0x3c, and '>' 0x3e .. '~' 0x7e).
_ENV_VAR_NAME_RE = re.compile("[ -<>-~]+")
_ENV_VAR_NAME_MSG = (
    "a valid environment variable name must consist only of printable ASCII characters "
    "other than '='"
)


def max_len_error(length: int) -> str:
    """The Kubernetes phrasing for an over-long value."""
    return f"must be no more than {length} characters"


def _regex_error(msg: str, fmt: str, *examples: str) -> str:
    # Mirrors Kubernetes' layout: explanation, examples, then the regex used,
    # so the user has both prose and a precise definition.
    text = msg
    if examples:
        text += " (e.g. " + " or ".join(f"'{e}'" for e in examples)
        text += f", regex used for validation is '{fmt}')"
    else:
        text += f" (regex used for validation is '{fmt}')"
    return text


def dns1123_label(value: str) -> list[str]:
    """Validate an RFC 1123 DNS label (namespace names, service names, ...)."""
    if not isinstance(value, str):
        return [_NOT_A_STRING]
    errs: list[str] = []
    if len(value) > DNS1123_LABEL_MAX_LENGTH:
        errs.append(max_len_error(DNS1123_LABEL_MAX_LENGTH))
    if not _DNS1123_LABEL_RE.fullmatch(value):
        errs.append(_regex_error(_DNS1123_LABEL_MSG, _DNS1123_LABEL_FMT, "my-name", "123-abc"))
    return errs


def dns1123_subdomain(value: str) -> list[str]:
    """Validate an RFC 1123 DNS subdomain (most object names, label key prefixes)."""
    if not isinstance(value, str):
        return [_NOT_A_STRING]
    errs: list[str] = []
    if len(value) > DNS1123_SUBDOMAIN_MAX_LENGTH:
        errs.append(max_len_error(DNS1123_SUBDOMAIN_MAX_LENGTH))
    if not _DNS1123_SUBDOMAIN_RE.fullmatch(value):
        errs.append(_regex_error(_DNS1123_SUBDOMAIN_MSG, _DNS1123_SUBDOMAIN_FMT, "example.com"))
    return errs


def label_key(value: str) -> list[str]:
    """Validate a qualified name: ``[prefix/]name``.

    The optional prefix is a DNS subdomain; the name is at most 63 characters
    of alphanumerics, '-', '_' and '.', starting and ending alphanumeric.
    Errors say which part is wrong because users often get only one wrong.
    """
    if not isinstance(value, str):
        return [_NOT_A_STRING]
    errs: list[str] = []
    parts = value.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            errs.append("prefix part " + _EMPTY)
        else:
            errs.extend("prefix part " + e for e in dns1123_subdomain(prefix))
    else:
        # More than one '/' cannot be split unambiguously, so describe the whole shape.
        return [
            "a qualified name "
            + _regex_error(_QUALIFIED_NAME_MSG, _QUALIFIED_NAME_FMT, "MyName", "my.name", "123-abc")
            + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        ]

    if not name:
        errs.append("name part " + _EMPTY)
    elif len(name) > QUALIFIED_NAME_MAX_LENGTH:
        errs.append("name part " + max_len_error(QUALIFIED_NAME_MAX_LENGTH))
    if not _QUALIFIED_NAME_RE.fullmatch(name):
        errs.append(
            "name part "
            + _regex_error(_QUALIFIED_NAME_MSG, _QUALIFIED_NAME_FMT, "MyName", "my.name", "123-abc")
        )
    return errs


def annotation_key(value: str) -> list[str]:
    """Annotation keys follow exactly the label key rules."""
    return label_key(value)


def label_value(value: str) -> list[str]:
    """Validate a label value: empty, or a <=63 char qualified-name-like string."""
    if not isinstance(value, str):
        return [_NOT_A_STRING]
    errs: list[str] = []
    if len(value) > LABEL_VALUE_MAX_LENGTH:
        errs.append(max_len_error(LABEL_VALUE_MAX_LENGTH))
    if not _LABEL_VALUE_RE.fullmatch(value):
        errs.append(
            _regex_error(_LABEL_VALUE_MSG, _QUALIFIED_NAME_FMT, "MyValue", "my_value", "12345")
        )
    return errs


def port_name(value: str) -> list[str]:
    """Validate an IANA_SVC_NAME (RFC 6335 section 5.1), used for named ports.

    The "at least one letter" rule exists so a port name can never be confused
    with a port number when a Service's targetPort refers to it.
    """
    if not isinstance(value, str):
        return [_NOT_A_STRING]
    errs: list[str] = []
    if len(value) > PORT_NAME_MAX_LENGTH:
        errs.append(max_len_error(PORT_NAME_MAX_LENGTH))
    if not _PORT_NAME_CHARSET_RE.fullmatch(value):
        errs.append("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    if not _PORT_NAME_LETTER_RE.search(value):
        errs.append("must contain at least one letter (a-z)")
    if "--" in value:
        errs.append("must not contain consecutive hyphens")
    if value.startswith("-") or value.endswith("-"):
        errs.append("must not begin or end with a hyphen")
    return errs


def c_identifier(value: str) -> list[str]:
    """Validate an environment variable name.

    Uses Kubernetes' relaxed rule (printable ASCII other than '=') rather than
    a strict C identifier, because real programs read variables like
    ``my.setting`` or ``JAVA-OPTS`` and Kubernetes permits them.
    """
    if not isinstance(value, str):
        return [_NOT_A_STRING]
    if not value:
        return [_EMPTY]
    if not _ENV_VAR_NAME_RE.fullmatch(value):
        return [_ENV_VAR_NAME_MSG]
    return []
