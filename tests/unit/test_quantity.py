"""Unit tests for kubeling.api.quantity (Kubernetes resource.Quantity semantics)."""

from __future__ import annotations

from fractions import Fraction

import pytest

from kubeling.api.quantity import (
    MAX_BINARY_QUANTITY,
    QuantityError,
    as_int_bytes,
    cpu_millis,
    format_quantity,
    parse_quantity,
)

# --------------------------------------------------------------------------
# parse_quantity: accepted forms
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # plain numbers and decimal point placements
        ("0", Fraction(0)),
        ("1", Fraction(1)),
        ("007", Fraction(7)),
        ("1.5", Fraction(3, 2)),
        (".5", Fraction(1, 2)),
        ("5.", Fraction(5)),
        ("0.001", Fraction(1, 1000)),
        # signs
        ("+1", Fraction(1)),
        ("-1", Fraction(-1)),
        ("-0", Fraction(0)),
        ("+.5", Fraction(1, 2)),
        ("-1.5", Fraction(-3, 2)),
        # decimal SI suffixes
        ("1n", Fraction(1, 10**9)),
        ("1u", Fraction(1, 10**6)),
        ("100m", Fraction(1, 10)),
        ("500m", Fraction(1, 2)),
        ("1k", Fraction(1000)),
        ("1M", Fraction(10**6)),
        ("1G", Fraction(10**9)),
        ("1T", Fraction(10**12)),
        ("1P", Fraction(10**15)),
        ("1E", Fraction(10**18)),
        ("1.5k", Fraction(1500)),
        ("0.5m", Fraction(1, 2000)),
        # binary suffixes
        ("1Ki", Fraction(1024)),
        ("1Mi", Fraction(1024**2)),
        ("128Mi", Fraction(134217728)),
        ("1Gi", Fraction(1024**3)),
        ("1Ti", Fraction(1024**4)),
        ("1Pi", Fraction(1024**5)),
        ("1Ei", Fraction(1024**6)),
        ("1.5Gi", Fraction(3 * 1024**3, 2)),
        (".5Ki", Fraction(512)),
        ("-2Ki", Fraction(-2048)),
        # decimal exponents
        ("1e3", Fraction(1000)),
        ("1E3", Fraction(1000)),
        ("12E-2", Fraction(12, 100)),
        ("1e+3", Fraction(1000)),
        ("1e0", Fraction(1)),
        ("1.5e2", Fraction(150)),
        ("-1e-3", Fraction(-1, 1000)),
        ("1e-9", Fraction(1, 10**9)),
    ],
)
def test_parse_valid(text: str, expected: Fraction) -> None:
    result = parse_quantity(text)
    assert result == expected
    assert isinstance(result, Fraction)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Finer than a nano-unit rounds *up* (away from zero), like Kubernetes.
        ("0.1n", Fraction(1, 10**9)),
        ("1.0000000001", Fraction(10**9 + 1, 10**9)),
        ("1e-20", Fraction(1, 10**9)),
        ("-1e-20", Fraction(-1, 10**9)),
        ("1.5n", Fraction(2, 10**9)),
        # Absurdly small exponents still round up to one nano-unit.
        ("1e-999999", Fraction(1, 10**9)),
        ("0e-999999", Fraction(0)),
    ],
)
def test_parse_rounds_up_to_nano_units(text: str, expected: Fraction) -> None:
    assert parse_quantity(text) == expected


def test_parse_binary_is_capped_at_int64_max() -> None:
    assert parse_quantity("99999999Ei") == MAX_BINARY_QUANTITY
    assert parse_quantity("-99999999Ei") == -MAX_BINARY_QUANTITY
    # Decimal quantities are not capped (Kubernetes only caps binary ones).
    assert parse_quantity("1e30") == Fraction(10**30)


def test_parse_large_exponent_within_limit() -> None:
    assert parse_quantity("1e300") == Fraction(10**300)


# --------------------------------------------------------------------------
# parse_quantity: rejected forms
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "must not be empty"),
        (" ", "whitespace"),
        (" 1", "whitespace"),
        ("1 ", "whitespace"),
        ("1 Mi", "whitespace"),
        ("1\tMi", "whitespace"),
        ("1\n", "whitespace"),
        ("1K", 'unknown suffix "K"'),
        ("1mi", 'unknown suffix "mi"'),
        ("1ki", 'unknown suffix "ki"'),
        ("1KI", 'unknown suffix "KI"'),
        ("1Kib", 'unknown suffix "Kib"'),
        ("1b", 'unknown suffix "b"'),
        ("1B", 'unknown suffix "B"'),
        ("12x", 'unknown suffix "x"'),
        ("1mm", 'unknown suffix "mm"'),
        ("1Mm", 'unknown suffix "Mm"'),
        ("1%", 'unknown suffix "%"'),
        ("1-", 'unknown suffix "-"'),
        ("1em", 'unknown suffix "em"'),
        ("+-1", "more than one sign"),
        ("--1", "more than one sign"),
        ("++1", "more than one sign"),
        ("-+1", "more than one sign"),
        ("1.2.3", "more than one decimal point"),
        ("1..2", "more than one decimal point"),
        (".", "missing number"),
        ("-", "missing number"),
        ("+", "missing number"),
        ("-.", "missing number"),
        ("Ki", "missing number"),
        ("m", "missing number"),
        ("e3", "missing number"),
        ("1e", "invalid exponent"),
        ("1e+", "invalid exponent"),
        ("1e-", "invalid exponent"),
        ("1e1.5", "invalid exponent"),
        ("1e3Ki", "invalid exponent"),
        ("1E3m", "invalid exponent"),
        ("1e9999", "out of range"),
        ("1e99999999999", "out of range"),
        ("\u0661", "missing number"),  # ARABIC-INDIC DIGIT ONE
        ("1\u0663", "unknown suffix"),  # non-ASCII digit as suffix
        ("0x10", 'unknown suffix "x10"'),
        ("inf", "missing number"),
        ("NaN", "missing number"),
    ],
)
def test_parse_invalid(text: str, reason: str) -> None:
    with pytest.raises(QuantityError) as excinfo:
        parse_quantity(text)
    message = str(excinfo.value)
    assert message.startswith(f'quantity "{text}" is invalid: ')
    assert reason in message


def test_parse_error_message_format() -> None:
    with pytest.raises(QuantityError, match=r'^quantity "12x" is invalid: unknown suffix "x"$'):
        parse_quantity("12x")


def test_quantity_error_is_value_error() -> None:
    with pytest.raises(ValueError):
        parse_quantity("bogus")


def test_parse_rejects_overlong_input() -> None:
    text = "1" * 65
    with pytest.raises(QuantityError, match="no more than 64 characters"):
        parse_quantity(text)
    # Exactly 64 characters is still fine.
    assert parse_quantity("1" * 64) == Fraction(int("1" * 64))


@pytest.mark.parametrize("value", [1, 1.5, None, b"1", ["1"]])
def test_parse_rejects_non_str(value: object) -> None:
    with pytest.raises(QuantityError, match="must be a string"):
        parse_quantity(value)  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# format_quantity
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Fraction(0), "0"),
        (0, "0"),
        (Fraction(1, 2), "500m"),
        (Fraction(1, 10), "100m"),
        (Fraction(1, 1000), "1m"),
        (Fraction(3, 2), "1500m"),
        (Fraction(1), "1"),
        (Fraction(1, 10**6), "1u"),
        (Fraction(1, 10**9), "1n"),
        (Fraction(1, 10**4), "100u"),
        (Fraction(1001, 10**6), "1001u"),
        (1000, "1k"),
        (1500, "1500"),
        (10**6, "1M"),
        (10**9, "1G"),
        (10**12, "1T"),
        (10**15, "1P"),
        (10**18, "1E"),
        (10**21, "1000E"),
        (1023, "1023"),
        (1024, "1Ki"),
        (1536, "1536"),
        (2048, "2Ki"),
        (134217728, "128Mi"),
        (1024**3, "1Gi"),
        (3 * 1024**3 // 2, "1536Mi"),
        (1024**4, "1Ti"),
        (1024**5, "1Pi"),
        (1024**6, "1Ei"),
        (1024**7, "1024Ei"),
        (1000 * 1024**2, "1000Mi"),
        # Decimal wins only when strictly shorter.
        (1024000, "1024k"),
        (-1024, "-1Ki"),
        (Fraction(-1, 2), "-500m"),
        (-1000, "-1k"),
        (-1536, "-1536"),
        (12345, "12345"),
    ],
)
def test_format(value: Fraction | int, expected: str) -> None:
    assert format_quantity(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Fraction(1, 10**10), "1n"),
        (Fraction(1, 3), "333333334n"),
        (Fraction(-1, 3), "-333333334n"),
        (Fraction(2, 3) * 1024, "682666666667n"),
    ],
)
def test_format_rounds_up_to_nano_units(value: Fraction, expected: str) -> None:
    assert format_quantity(value) == expected


@pytest.mark.parametrize(
    "text",
    ["500m", "128Mi", "1k", "1", "0", "1536", "1Gi", "100n", "5u", "-1Ki", "1E", "1001m"],
)
def test_canonical_text_round_trips(text: str) -> None:
    assert format_quantity(parse_quantity(text)) == text


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("0.5", "500m"),
        ("1e3", "1k"),
        ("1000", "1k"),
        ("1024", "1Ki"),
        ("0.5Ki", "512"),
        ("1.5Gi", "1536Mi"),
        ("1000m", "1"),
        ("1000000u", "1"),
        ("12E-2", "120m"),
        ("+1", "1"),
        ("-0", "0"),
        ("2048Ki", "2Mi"),
    ],
)
def test_parse_then_format_gives_canonical(text: str, canonical: str) -> None:
    assert format_quantity(parse_quantity(text)) == canonical


@pytest.mark.parametrize("value", ["1", 1.5, None, True])
def test_format_rejects_non_numbers(value: object) -> None:
    with pytest.raises(TypeError):
        format_quantity(value)  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# cpu_millis / as_int_bytes
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "millis"),
    [
        ("1", 1000),
        ("500m", 500),
        ("0.1", 100),
        ("1m", 1),
        ("0", 0),
        ("100u", 1),  # a fraction of a millicore rounds up
        ("1n", 1),
        ("1001u", 2),
        ("2.5", 2500),
        ("1k", 1_000_000),
    ],
)
def test_cpu_millis(text: str, millis: int) -> None:
    result = cpu_millis(parse_quantity(text))
    assert result == millis
    assert isinstance(result, int)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("128Mi", 134217728),
        ("1Gi", 1024**3),
        ("1k", 1000),
        ("1", 1),
        ("0", 0),
        ("500m", 1),  # half a byte rounds up
        ("1.5", 2),
        ("1.5Ki", 1536),
        ("1e3", 1000),
    ],
)
def test_as_int_bytes(text: str, size: int) -> None:
    result = as_int_bytes(parse_quantity(text))
    assert result == size
    assert isinstance(result, int)


def test_ceil_helpers_on_negative_values_round_towards_positive() -> None:
    assert cpu_millis(Fraction(-1, 10000)) == 0
    assert as_int_bytes(Fraction(-3, 2)) == -1
