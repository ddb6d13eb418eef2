"""Kubernetes ``resource.Quantity`` parsing and canonical formatting.

Quantities are held as exact :class:`fractions.Fraction` values: floats would
turn "0.1" CPU or "1e-3" into inexact binary numbers, and resource accounting
(sums of requests against node capacity) must not drift.

Grammar accepted (the same as Kubernetes)::

    quantity  ::= [sign] number [suffix]
    sign      ::= "+" | "-"
    number    ::= digits | digits "." | digits "." digits | "." digits
    suffix    ::= binary | decimal | exponent
    binary    ::= "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
    decimal   ::= "n" | "u" | "m" | "" | "k" | "M" | "G" | "T" | "P" | "E"
    exponent  ::= ("e" | "E") [sign] digits

Like Kubernetes, parsed values are rounded *up* (away from zero) to whole
nano-units, so a request for a tiny non-zero amount never becomes zero, and
values written with a binary suffix are capped at 2**63-1.
"""

from __future__ import annotations

import functools
import math
import re
from fractions import Fraction

__all__ = [
    "MAX_BINARY_QUANTITY",
    "MAX_QUANTITY_LENGTH",
    "QuantityError",
    "as_int_bytes",
    "cpu_millis",
    "format_quantity",
    "parse_quantity",
]

# Real quantities are short; the cap stops pathological input early.
MAX_QUANTITY_LENGTH = 64
# Kubernetes caps binary-suffixed quantities at the int64 maximum.
MAX_BINARY_QUANTITY = 2**63 - 1

# Kubernetes parses the exponent as an int32.
_MAX_EXPONENT = 2**31 - 1
# Positive exponents beyond this would build enormous integers (a DoS risk);
# no resource needs more than ~10**1000 of anything.
_MAX_SUPPORTED_EXPONENT = 1000
# With at most 64 characters the mantissa lies in [10**-63, 10**64), so any
# exponent below -100 yields a value under one nano-unit.  Clamping to -100
# gives the identical (rounded up) result without computing 10**-2e9.
_MIN_USEFUL_EXPONENT = -100

_NANOS_PER_UNIT = 10**9

_BINARY_SUFFIXES: dict[str, int] = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL_SUFFIXES: dict[str, int] = {
    "n": -9,
    "u": -6,
    "m": -3,
    "": 0,
    "k": 3,
    "M": 6,
    "G": 9,
    "T": 12,
    "P": 15,
    "E": 18,
}
_BINARY_BY_POWER = {power: suffix for suffix, power in _BINARY_SUFFIXES.items()}
_DECIMAL_BY_EXPONENT = {exp: suffix for suffix, exp in _DECIMAL_SUFFIXES.items()}

# [0-9] rather than \d: \d also matches non-ASCII digits such as "٣".
_EXPONENT_RE = re.compile(r"[eE]([+-]?[0-9]+)")


class QuantityError(ValueError):
    """Raised when a string is not a valid Kubernetes quantity."""


def _is_digit(char: str) -> bool:
    return "0" <= char <= "9"


def parse_quantity(text: str) -> Fraction:
    """Parse a Kubernetes quantity such as ``"500m"``, ``"1.5Gi"`` or ``"1e3"``."""
    if not isinstance(text, str):
        raise QuantityError(f"quantity must be a string, not {type(text).__name__}")
    return _parse_cached(text)


# The same few quantities ("100m", "64Mi") appear in every pod of a deployment:
# parsing each once keeps validation off the profile of the create path.
@functools.lru_cache(maxsize=4096)
def _parse_cached(text: str) -> Fraction:
    if len(text) > MAX_QUANTITY_LENGTH:
        raise QuantityError(
            f'quantity "{text[:MAX_QUANTITY_LENGTH]}..." is invalid: '
            f"must be no more than {MAX_QUANTITY_LENGTH} characters"
        )

    def invalid(reason: str) -> QuantityError:
        return QuantityError(f'quantity "{text}" is invalid: {reason}')

    if not text:
        raise invalid("must not be empty")
    if any(char.isspace() for char in text):
        raise invalid("must not contain whitespace")

    end = len(text)
    pos = 0
    negative = False
    if text[0] in "+-":
        negative = text[0] == "-"
        pos = 1
        if pos < end and text[pos] in "+-":
            raise invalid("more than one sign")

    int_start = pos
    while pos < end and _is_digit(text[pos]):
        pos += 1
    int_digits = text[int_start:pos]
    frac_digits = ""
    if pos < end and text[pos] == ".":
        pos += 1
        frac_start = pos
        while pos < end and _is_digit(text[pos]):
            pos += 1
        frac_digits = text[frac_start:pos]
    if not int_digits and not frac_digits:
        raise invalid("missing number")

    suffix = text[pos:]
    if suffix.startswith("."):
        raise invalid("more than one decimal point")

    scale = 10 ** len(frac_digits)
    mantissa = Fraction(int(int_digits or "0") * scale + int(frac_digits or "0"), scale)

    binary = suffix in _BINARY_SUFFIXES
    if binary:
        value = mantissa * 1024 ** _BINARY_SUFFIXES[suffix]
    else:
        if suffix in _DECIMAL_SUFFIXES:
            # Checked before the exponent form so "1E" stays exa, not an exponent.
            exponent = _DECIMAL_SUFFIXES[suffix]
        else:
            match = _EXPONENT_RE.fullmatch(suffix)
            if match is None:
                if suffix[0] in "eE" and (len(suffix) == 1 or suffix[1] in "+-0123456789"):
                    raise invalid(f'invalid exponent "{suffix}": expected e.g. "e3" or "E-2"')
                raise invalid(f'unknown suffix "{suffix}"')
            exponent = int(match.group(1))
            if abs(exponent) > _MAX_EXPONENT or exponent > _MAX_SUPPORTED_EXPONENT:
                raise invalid(f'exponent "{suffix}" is out of range')
            exponent = max(exponent, _MIN_USEFUL_EXPONENT)
        value = mantissa * Fraction(10) ** exponent

    # Round the magnitude up to whole nano-units: asking for a sliver of a
    # resource should grant the smallest representable amount, not zero.
    nanos = math.ceil(value * _NANOS_PER_UNIT)
    value = Fraction(nanos, _NANOS_PER_UNIT)
    if binary and value > MAX_BINARY_QUANTITY:
        value = Fraction(MAX_BINARY_QUANTITY)
    return -value if negative else value


def format_quantity(value: Fraction | int) -> str:
    """Render a quantity in a short canonical form.

    Whole multiples of 1024 (at least 1Ki) use binary suffixes because memory
    is usually sized in powers of two ("128Mi"), unless the decimal form is
    strictly shorter ("1E", "1024k"); everything else uses the largest decimal
    SI suffix that keeps the number an integer ("500m", "1k", "1500").
    Precision finer than a nano-unit is rounded up (away from zero), matching
    what Kubernetes stores.
    """
    if isinstance(value, bool) or not isinstance(value, Fraction | int):
        raise TypeError(f"quantity value must be a Fraction or int, not {type(value).__name__}")
    value = Fraction(value)
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    nanos = math.ceil(abs(value) * _NANOS_PER_UNIT)

    decimal = _format_decimal(nanos)
    whole, remainder = divmod(nanos, _NANOS_PER_UNIT)
    if remainder == 0 and whole >= 1024 and whole % 1024 == 0:
        power = 0
        while power < max(_BINARY_BY_POWER) and whole % 1024 == 0:
            whole //= 1024
            power += 1
        binary = f"{whole}{_BINARY_BY_POWER[power]}"
        # Binary wins ties; decimal only when strictly shorter, so 10**18 is
        # "1E" rather than "976562500000000Ki".
        if len(binary) <= len(decimal):
            return sign + binary
    return sign + decimal


def _format_decimal(nanos: int) -> str:
    # Pick the largest SI suffix that leaves an integer mantissa.
    exponent = -9
    mantissa = nanos
    while exponent < max(_DECIMAL_BY_EXPONENT) and mantissa % 1000 == 0:
        mantissa //= 1000
        exponent += 3
    return f"{mantissa}{_DECIMAL_BY_EXPONENT[exponent]}"


def cpu_millis(q: Fraction) -> int:
    """CPU in millicores, rounded up so a fractional millicore is never lost."""
    return math.ceil(q * 1000)


def as_int_bytes(q: Fraction) -> int:
    """A byte count, rounded up to a whole byte."""
    return math.ceil(q)
