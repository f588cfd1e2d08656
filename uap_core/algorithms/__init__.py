"""The one registry of UAP methods: name → class (each with its Params dataclass of paper defaults)."""

from __future__ import annotations

from ..errors import ParameterError
from .base import AttackSetup, UAPAlgorithm
from .sga import SGA
from .sgd_uap import SGDUAP
from .uap import UAP

ALGORITHMS: dict[str, type[UAPAlgorithm]] = {cls.name: cls for cls in (SGA, SGDUAP, UAP)}


def get_algorithm(name: str) -> type[UAPAlgorithm]:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ParameterError(f"unknown algorithm {name!r}; choose one of: {', '.join(ALGORITHMS)}") from None


__all__ = ["ALGORITHMS", "AttackSetup", "UAPAlgorithm", "get_algorithm"]
