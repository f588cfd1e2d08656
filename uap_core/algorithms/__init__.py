"""The one registry of UAP methods: name → class (each with its Params dataclass of paper defaults).

One import and one line in ``_CLASSES`` per method; the order is the order the UI and the CLI list them in.
"""

from __future__ import annotations

from ..errors import ParameterError
from .base import FAMILIES, AttackSetup, UAPAlgorithm
from .sga import SGA
from .sgd_uap import SGDUAP
from .uap import UAP
from .df_uap import DFUAP
from .cos_uap import CosUAP
from .sv_uap import SVUAP
from .gd_uap import GDUAP
from .fff import FFF
from .trm_uap import TRMUAP
from .gap import GAP
from .dm_uap import DMUAP

_CLASSES: tuple[type[UAPAlgorithm], ...] = (
    SGA,  # data-driven
    SGDUAP,
    DMUAP,
    UAP,
    DFUAP,
    CosUAP,
    SVUAP,
    GDUAP,  # data-free (GD-UAP with prior "data" reads images)
    FFF,
    TRMUAP,
    GAP,  # generative
)
ALGORITHMS: dict[str, type[UAPAlgorithm]] = {cls.name: cls for cls in _CLASSES}


def get_algorithm(name: str) -> type[UAPAlgorithm]:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ParameterError(f"unknown algorithm {name!r}; choose one of: {', '.join(ALGORITHMS)}") from None


__all__ = ["ALGORITHMS", "FAMILIES", "AttackSetup", "UAPAlgorithm", "get_algorithm"]
