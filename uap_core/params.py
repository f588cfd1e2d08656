"""Settings as data: dataclasses whose fields carry their type, range, choices and help text.

Every setting — a run's (:class:`~uap_core.run_types.RunConfig`), an algorithm's hyperparameters (its ``Params``)
and a study's (its ``Settings``) — is declared once with :func:`param`. From that one declaration come

- the validation: :func:`parse_params` turns user input (CLI strings, UI values, JSON) into a validated instance
  and raises ParameterError naming the allowed range; :func:`parse_value` checks one value;
- the command line's options (``uap_core.__main__``) and the pages' form fields (``uap_ui``), through
  :func:`describe`.

Adding a setting is one line: a field declared with :func:`param`.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from typing import Any, get_args, get_origin, get_type_hints

from .errors import ParameterError


def param(default: Any, help: str, minimum: float | None = None, maximum: float | None = None,
          choices: tuple | None = None, label: str | None = None, *, exclusive_min: bool = False,
          flag: str | None = None, cli: bool = True, form: bool = True, hint: str | None = None,
          step: float | None = None, choice_labels: dict[Any, str] | None = None) -> Any:
    """A dataclass field with its allowed range (inclusive; ``exclusive_min``: the minimum itself is not allowed)
    or choices and a help text. The field's type hint gives its type: int, float, str, bool, a list of them
    (``list[int]``: a list default; each element checked) or any of these ``| None`` (None: the setting is not
    given, e.g. "the algorithm's default").

    Where it is shown: ``flag``: its command-line option (default ``--name-with-dashes``); ``cli`` / ``form``:
    whether the command line / a page's form shows it. ``label``: the form's label (default: the name with spaces);
    ``hint``: the form's tooltip (default: ``help``); ``step``: the form's step of a number;
    ``choice_labels``: the form's text of each choice."""
    metadata = {"help": help, "min": minimum, "max": maximum, "choices": choices, "label": label,
                "exclusive_min": exclusive_min, "flag": flag, "cli": cli, "form": form, "hint": hint, "step": step,
                "choice_labels": choice_labels}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


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


def _type_name(hint: Any) -> str:
    """int → "int", list[int] → "list[int]", int | None → "int", dict[...] → "dict"; anything else "str"."""
    origin = get_origin(hint)
    if origin in (list, tuple):
        (inner, *_) = get_args(hint) or (str,)
        return f"list[{_type_name(inner)}]"
    if hint is dict or origin is dict:
        return "dict"
    args = [a for a in get_args(hint) if a is not type(None)]
    if args and origin is not None:  # Optional[X] / X | None / X | Y: the first
        return _type_name(args[0])
    return {int: "int", float: "float", str: "str", bool: "bool"}.get(hint, "str")


def describe(settings_class: type) -> list[dict]:
    """One dict per field, in declaration order: name, type ("int", "float", "str", "bool", "dict", "list[int]",
    "list[float]", "list[str]"), optional (None allowed), default, help, min, max, exclusive_min, choices, label,
    flag, cli, form, hint, step, choice_labels (for forms and command lines)."""
    hints = get_type_hints(settings_class)
    out = []
    for f in dataclasses.fields(settings_class):
        meta = dict(f.metadata)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        hint = hints[f.name]
        out.append({"name": f.name, "type": _type_name(hint), "optional": type(None) in get_args(hint),
                    "default": default, **meta, "label": meta.get("label") or f.name.replace("_", " "),
                    "flag": meta.get("flag") or "--" + f.name.replace("_", "-"),
                    "hint": meta.get("hint") or meta.get("help")})
    return out


def parse_value(spec: dict, raw: Any) -> Any:
    """One value of the setting ``spec`` (from :func:`describe`): a list setting takes a list or a "10,30,100"
    string (each element checked); ParameterError names the setting and the allowed values."""
    name, kind = spec["name"], spec["type"]
    if kind.startswith("list["):
        items = raw.split(",") if isinstance(raw, str) else list(raw)
        items = [p for p in (p.strip() if isinstance(p, str) else p for p in items) if p != ""]
        if not items:
            raise ParameterError(f"{name} needs at least one value (comma-separated)")
        return [_parse_scalar(spec, p, kind[5:-1]) for p in items]
    return _parse_scalar(spec, raw, kind)


def _parse_scalar(spec: dict, raw: Any, kind: str) -> Any:
    name = spec["name"]
    if spec.get("choices"):
        if raw not in spec["choices"]:
            raise ParameterError(f"{name} {raw!r} is not allowed; choose one of "
                                 f"{', '.join(map(str, spec['choices']))}")
        return raw
    if kind == "dict":
        return dict(raw)
    if kind == "str":
        if not isinstance(raw, str) or not raw.strip():
            raise ParameterError(f"{name} must be a non-empty text, got {raw!r}")
        return raw.strip()
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ParameterError(f"{name} must be true or false, got {raw!r}")
    if kind == "int" and isinstance(raw, int) and not isinstance(raw, bool):
        check_range(name, raw, spec.get("min"), spec.get("max"), spec.get("exclusive_min", False))
        return raw  # exact (a float holds whole numbers exactly only up to 2^53)
    number = parse_number(raw, name)
    if kind == "int":
        if number != int(number):
            raise ParameterError(f"{name} must be a whole number, got {raw!r}")
        number = int(number)
    check_range(name, number, spec.get("min"), spec.get("max"), spec.get("exclusive_min", False))
    return number


def parse_params(settings_class: type, values: dict[str, Any] | None, noun: str = "parameter") -> Any:
    """Validate ``values`` (missing, None or "" ones take the defaults) into an instance of ``settings_class``.
    ``noun`` names what the fields are in the message about unknown ones ("parameter", "setting")."""
    values = dict(values or {})
    specs = {spec["name"]: spec for spec in describe(settings_class)}
    unknown = set(values) - set(specs)
    if unknown:
        raise ParameterError(f"unknown {noun}(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(specs))}")
    parsed = {name: parse_value(spec, values[name]) for name, spec in specs.items()
              if values.get(name) is not None and values.get(name) != ""}
    return settings_class(**parsed)
