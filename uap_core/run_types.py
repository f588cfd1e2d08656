"""What a run is asked for and what it gives back: :class:`RunConfig`, :class:`RunEvent`, :class:`RunResult`.

:class:`uap_core.run.Run` takes a RunConfig, yields RunEvents and ends with a RunResult.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from . import distributed
from .algorithms import get_algorithm
from .errors import ParameterError
from .evaluation import Evaluation
from .images import STREAM_CHOICES
from .jsonable import jsonable
from .models import get_spec, resolve_device
from .params import check_range, parse_number, parse_params

NORMS = ("linf", "l2")
KEEP = ("best", "last")
COMPILE = ("auto", "on", "off")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class RunConfig:
    """What to generate. eps is in pixel units (10/255); accepts "10/255" strings too.

    fit / holdout: image counts (None: half of the images each / all the rest). epochs: passes over the fit set
    (None: the algorithm's default). eval_every: steps between held-out evaluations (None: about 20 per run);
    the first step and the last are always evaluated too.
    params: the algorithm's own hyperparameters (see its Params class; missing ones take the paper defaults).
    augment: fit on this many random views (crop + flip) of every fit image instead of the images themselves
    (0: off); for tiny fit sets such as the embedded samples. holdout_views: measure on this many random views of
    every held-out image instead of the image itself (0: off): finer, steadier fooling ratios from a handful of
    held-out photos. The views are drawn after the split, so no photo is on both sides.
    keep: which δ the run returns: "best" — the highest fit-set fooling ratio at the evaluations (never chosen on
    held-out images) — or "last", the final δ (skips the fit-set evaluations: cheaper for short runs). A data-free
    method always keeps its last δ: picking the best would read the fit images it must not see.
    max_image_gradients: a fair budget across methods — stop once the steps have cost this many image-gradients
    (forward + input-gradient backward passes over single images; see ``UAPAlgorithm.image_gradients_per_step``).
    Without ``epochs``, a budget runs as many epochs as it needs.
    compile: capture SGA's and SGD-UAP's gradient step with torch.compile — on CUDA as CUDA graphs — "on",
    "off", or "auto" (on for CUDA, off on the CPU, where compiling costs about a minute and needs a C++ compiler).
    stream: read the held-out images from disk batch by batch at every evaluation instead of keeping them in
    memory — "on", "off", or "auto" (a folder of more than ``images.STREAM_ABOVE`` files); only the fit images
    are decoded. The same predictions as in memory (a file that cannot be decoded is left out when met).
    workers: DataLoader processes that decode a streamed set (None: the cores shared by the ranks; 0: none).
    Under torchrun (several processes) each rank holds one block of the fit images and evaluates its share of
    the held-out ones; only SGA and SGD-UAP run that way (see ``uap_core.distributed``).
    """

    model: str = "efficientnet_lite0"
    algorithm: str = "sga"
    eps: float | str = 10 / 255
    norm: str = "linf"
    target: int | None = None
    images: str = "samples"
    fit: int | None = None
    holdout: int | None = None
    seed: int = 0
    device: str = "auto"
    epochs: int | None = None
    params: dict[str, Any] = field(default_factory=dict)
    eval_every: int | None = None
    precision: str = "auto"
    input_size: int | None = None
    weights: str | None = None
    max_seconds: float | None = None
    augment: int = 0
    holdout_views: int = 0
    keep: str = "best"
    compile: str = "auto"
    max_image_gradients: int | None = None
    stream: str = "off"
    workers: int | None = None

    def validated(self) -> "RunConfig":
        """A copy with eps parsed and every field checked; ParameterError names the allowed range."""
        cfg = dataclasses.replace(self, params=dict(self.params))
        cfg.eps = parse_number(cfg.eps, "eps")
        check_range("eps", cfg.eps, 0.0, 1.0, exclusive_min=True) if cfg.norm == "linf" else \
            check_range("eps", cfg.eps, 0.0, 1000.0, exclusive_min=True)
        if cfg.norm not in NORMS:
            raise ParameterError(f"norm {cfg.norm!r} is not allowed; choose one of {', '.join(NORMS)}")
        if cfg.compile not in COMPILE:
            raise ParameterError(f"compile {cfg.compile!r} is not allowed; choose one of {', '.join(COMPILE)}")
        if cfg.keep not in KEEP:
            raise ParameterError(f"keep {cfg.keep!r} is not allowed; choose one of {', '.join(KEEP)}")
        if cfg.stream not in STREAM_CHOICES:
            raise ParameterError(f"stream {cfg.stream!r} is not allowed; choose one of {', '.join(STREAM_CHOICES)}")
        if cfg.workers is not None:
            workers = parse_number(cfg.workers, "workers")
            check_range("workers", workers, 0, 64)
            if workers != int(workers):
                raise ParameterError(f"workers must be a whole number, got {cfg.workers!r}")
            cfg.workers = int(workers)
        if cfg.precision not in PRECISIONS:
            raise ParameterError(f"precision {cfg.precision!r} is not allowed; choose one of {', '.join(PRECISIONS)}")
        algorithm = get_algorithm(cfg.algorithm)
        if distributed.is_active() and not algorithm.supports_distributed:
            raise ParameterError(f"{cfg.algorithm} runs in one process only; under torchrun use sga or sgd_uap")
        spec = get_spec(cfg.model)
        if spec.family == "ensemble" and not algorithm.supports_ensemble:
            raise ParameterError(f"{cfg.algorithm} fits one model at a time; an ensemble ({cfg.model}) needs a "
                                 f"gradient method such as sga or sgd_uap")
        parse_params(algorithm.Params, cfg.params)
        if cfg.target is not None:
            if not algorithm.supports_targeted:
                raise ParameterError(f"{cfg.algorithm} is untargeted only; leave the target class empty")
            cfg.target = int(parse_number(cfg.target, "target"))
            check_range("target class", cfg.target, 0, spec.num_classes - 1)
        for name in ("fit", "holdout", "epochs", "eval_every", "input_size", "max_image_gradients"):
            value = getattr(cfg, name)
            if value is not None:
                number = parse_number(value, name)
                if number != int(number):
                    raise ParameterError(f"{name} must be a whole number, got {value!r}")
                check_range(name, number, 16 if name == "input_size" else 1, 100_000_000)
                setattr(cfg, name, int(number))
        for name in ("augment", "holdout_views"):
            value = parse_number(getattr(cfg, name), name)
            check_range(name, value, 0, 64)
            if value != int(value):
                raise ParameterError(f"{name} must be a whole number, got {getattr(self, name)!r}")
            setattr(cfg, name, int(value))
        cfg.seed = int(parse_number(cfg.seed, "seed"))
        check_range("seed", cfg.seed, 0, 2**63 - 1)
        if cfg.max_seconds is not None:
            cfg.max_seconds = parse_number(cfg.max_seconds, "max_seconds")
            check_range("max_seconds", cfg.max_seconds, 0.0, None, exclusive_min=True)
        resolve_device(cfg.device)
        return cfg


@dataclass
class RunEvent:
    """kind: "start" | "step" | "eval" | "done"; step: updates so far; elapsed: seconds since the start."""

    kind: str
    step: int
    epoch: int
    elapsed: float
    data: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "step": self.step, "epoch": self.epoch, "elapsed": self.elapsed, **self.data}


@dataclass
class RunResult:
    """The outcome. delta: the kept δ (3, H, W) float32 CPU — the best by the fit-set fooling ratio at the
    evaluations, or the last (``RunConfig.keep``); evaluation: that δ on the held-out images; random_evaluation:
    same-norm random noise there."""

    config: RunConfig
    delta: torch.Tensor
    last_delta: torch.Tensor
    best_step: int
    evaluation: Evaluation
    random_evaluation: Evaluation
    steps: int
    seconds: float
    reason: str  # "completed" | "converged" | "stopped" | "time limit" | "budget" | "out of memory"
    history: list[dict[str, Any]]
    info: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        """The JSON-able headline figures (the CLI's --json output, plus the artifact path added there)."""
        held_out = self.evaluation.as_dict(top=10)
        return {
            "model": self.config.model, "algorithm": self.config.algorithm, "eps": self.config.eps,
            "norm": self.config.norm, "target": self.config.target, "seed": self.config.seed,
            "fooling_ratio": self.evaluation.fooling_ratio,
            "random_fooling_ratio": self.random_evaluation.fooling_ratio,
            "dominant_label": held_out["dominant_label"], "dominant_name": held_out["dominant_name"],
            "dominant_share": held_out["dominant_share"],
            "clean_accuracy": self.evaluation.clean_accuracy, "attacked_accuracy": self.evaluation.attacked_accuracy,
            "target_success": self.evaluation.target_success,
            "heldout_images": self.evaluation.count, "fit_images": self.info["fit_images"],
            "linf": self.delta.abs().max().item(), "l2": self.delta.norm().item(),
            "steps": self.steps, "best_step": self.best_step, "seconds": self.seconds, "reason": self.reason,
            "image_gradients": self.info.get("image_gradients", 0),
            "device": self.info["device"], "precision": self.info["precision"],
        }

    def metadata(self) -> dict[str, Any]:
        """Everything needed to reproduce and judge the run (saved beside δ)."""
        return {
            "kind": "uap", "config": jsonable(dataclasses.asdict(self.config)), **jsonable(self.info),
            "summary": self.summary(), "evaluation": self.evaluation.as_dict(),
            "random_evaluation": {"fooling_ratio": self.random_evaluation.fooling_ratio},
            "history": jsonable(self.history),
            "model": self.config.model, "algorithm": self.config.algorithm, "eps": self.config.eps,
            "norm": self.config.norm, "seed": self.config.seed, "target": self.config.target,
            "input_size": list(self.delta.shape[1:]),
        }
