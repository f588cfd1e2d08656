"""Studies: the papers' experiments, one module each (see :mod:`uap_core.studies.base`).

    >>> from uap_core.studies import study_names, get_study
    >>> study = get_study("images_needed")(settings={"fit_sizes": [10, 100]})

The registry is one ordered list; a new study is one module here and one line in ``_MODULES``.
"""

from __future__ import annotations

import importlib

from ..errors import ParameterError
from .base import Study, StudyProgress, StudyResult, write_outputs

# module name == study name; the order is the order of the CLI's list and the page's picker
_MODULES = ("images_needed", "batch_stability", "transfer_ensembles", "dominant_labels", "geometry", "finetune",
            "robustness")


def study_names() -> list[str]:
    """The registered studies whose module exists, in order."""
    return [name for name in _MODULES if _module(name) is not None]


def _module(name: str):
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"{__name__}.{name}":
            return None
        raise


def get_study(name: str) -> type[Study]:
    """The Study class of ``name``; ParameterError lists the known studies."""
    module = _module(name) if name in _MODULES else None
    if module is None:
        raise ParameterError(f"unknown study {name!r}; choose one of {', '.join(study_names())}")
    cls = next(v for v in vars(module).values()
               if isinstance(v, type) and issubclass(v, Study) and v is not Study and getattr(v, "name", None) == name)
    return cls


__all__ = ["Study", "StudyProgress", "StudyResult", "get_study", "study_names", "write_outputs"]
