"""The one registry of UAP methods: name → class (each with its Params dataclass of paper defaults).

One import and one line in ``_CLASSES`` per method; the order is the order the UI and the CLI list them in.
"""

from __future__ import annotations

from ..errors import ParameterError
from .base import FAMILIES, AttackSetup, UAPAlgorithm
from .sga import SGA
from .sgd_uap import SGDUAP
from .uap import UAP

_CLASSES: tuple[type[UAPAlgorithm], ...] = (
    SGA,
    SGDUAP,
    UAP,
)
ALGORITHMS: dict[str, type[UAPAlgorithm]] = {cls.name: cls for cls in _CLASSES}


def get_algorithm(name: str) -> type[UAPAlgorithm]:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ParameterError(f"unknown algorithm {name!r}; choose one of: {', '.join(ALGORITHMS)}") from None


__all__ = ["ALGORITHMS", "FAMILIES", "AttackSetup", "UAPAlgorithm", "get_algorithm"]
