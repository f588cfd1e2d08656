"""One conversion of Python, NumPy and torch values into what :func:`json.dumps` writes as standard JSON."""

from __future__ import annotations

import dataclasses
import math
from pathlib import PurePath
from typing import Any


def jsonable(value: Any, strict: bool = False) -> Any:
    """``value`` as plain JSON data: dicts (keys as strings), lists, str, int, float, bool, None.

    Tuples and sets become lists (sets sorted by ``repr``), dataclass instances dicts, NumPy/torch scalars their
    Python number and arrays/tensors nested lists, paths strings; NaN and ±inf become None (JSON has no such
    numbers); anything else its ``str`` — or, with ``strict``, a TypeError naming its type.
    """
    if isinstance(value, dict):
        return {str(key): jsonable(item, strict) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item, strict) for item in value]
    if isinstance(value, (set, frozenset)):
        return [jsonable(item, strict) for item in sorted(value, key=repr)]
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value), strict)
    if isinstance(value, PurePath):
        return str(value)
    if hasattr(value, "tolist") and callable(value.tolist):    # NumPy / torch scalars, arrays and tensors
        if hasattr(value, "detach"):
            value = value.detach().cpu()
        return jsonable(value.tolist(), strict)
    if strict:
        raise TypeError(f"object of type {type(value).__name__} is not JSON serialisable")
    return str(value)
