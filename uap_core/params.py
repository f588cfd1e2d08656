"""Hyperparameters as data: dataclasses whose fields carry their range and help text.

A field is declared with :func:`param`; :func:`parse_params` turns user input (CLI strings, UI values, JSON)
into a validated instance and raises ParameterError naming the allowed range. The UI builds its forms from
:func:`describe`, the CLI its options, so the defaults live in one place: the algorithm's Params class.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from typing import Any, get_type_hints

from .errors import ParameterError


def param(default: Any, help: str, minimum: float | None = None, maximum: float | None = None,
          choices: tuple | None = None, label: str | None = None) -> Any:
    """A dataclass field with its allowed range (inclusive) or choices and a help text."""
    return dataclasses.field(default=default, metadata={
        "help": help, "min": minimum, "max": maximum, "choices": choices, "label": label})


def parse_number(text: str | float | int, name: str = "value") -> float:
    """Accept 0.04, "0.04", "10/255" or "1e-2" → float. Non-numeric text → ParameterError."""
    if isinstance(text, bool):
        raise ParameterError(f"{name} must be a number, got {text!r}")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        try:
            value = float(Fraction(str(text).strip())) if "/" in str(text) else float(str(text).strip())
        except (ValueError, ZeroDivisionError):
            raise ParameterError(f"{name} must be a number such as 0.04 or 10/255, got {text!r}") from None
    if not math.isfinite(value):
        raise ParameterError(f"{name} must be a finite number, got {text!r}")
    return value


def check_range(name: str, value: float, minimum: float | None, maximum: float | None,
                exclusive_min: bool = False) -> None:
    low_ok = minimum is None or (value > minimum if exclusive_min else value >= minimum)
    high_ok = maximum is None or value <= maximum
    if not (low_ok and high_ok):
        low = "-inf" if minimum is None else f"{minimum:g}"
        high = "inf" if maximum is None else f"{maximum:g}"
        bracket = "(" if exclusive_min else "["
        raise ParameterError(f"{name} = {value:g} is out of range; allowed {bracket}{low}, {high}]")


def describe(params_class: type) -> list[dict]:
    """One dict per field: name, type, default, help, min, max, choices, label (for forms and --help)."""
    hints = get_type_hints(params_class)
    out = []
    for field in dataclasses.fields(params_class):
        meta = dict(field.metadata)
        out.append({"name": field.name, "type": hints[field.name], "default": field.default, **meta,
                    "label": meta.get("label") or field.name.replace("_", " ")})
    return out


def parse_params(params_class: type, values: dict[str, Any] | None) -> Any:
    """Validate ``values`` (missing keys take the defaults) into an instance of ``params_class``."""
    values = dict(values or {})
    known = {f.name for f in dataclasses.fields(params_class)}
    unknown = set(values) - known
    if unknown:
        raise ParameterError(f"unknown parameter(s) {', '.join(sorted(unknown))}; "
                             f"allowed: {', '.join(sorted(known))}")
    parsed = {}
    for spec in describe(params_class):
        name = spec["name"]
        if name not in values or values[name] is None or values[name] == "":
            continue
        raw = values[name]
        kind = spec["type"]
        if spec["choices"]:
            if raw not in spec["choices"]:
                raise ParameterError(f"{name} = {raw!r} is not allowed; choose one of {', '.join(map(str, spec['choices']))}")
            parsed[name] = raw
            continue
        number = parse_number(raw, name)
        if kind in (int, "int") or kind == int | None:
            if number != int(number):
                raise ParameterError(f"{name} must be a whole number, got {raw!r}")
            number = int(number)
        check_range(name, number, spec["min"], spec["max"])
        parsed[name] = number
    return params_class(**parsed)
