"""What a run is asked for and what it gives back: :class:`RunConfig`, :class:`RunEvent`, :class:`RunResult`.

:class:`uap_core.run.Run` takes a RunConfig, yields RunEvents and ends with a RunResult.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from . import distributed
from .algorithms import ALGORITHMS, get_algorithm
from .artifacts import NORMS  # the norms δ can have (and an artifact records)
from .errors import ParameterError
from .evaluation import Evaluation
from .images import STREAM_CHOICES
from .jsonable import jsonable
from .models import get_spec, resolve_device
from .params import check_range, describe, param, parse_params, parse_value
from .provenance import run_provenance
from .transforms import KINDS as ROBUST_KINDS, robust_fields

KEEP = ("best", "last")
COMPILE = ("auto", "on", "off")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MODEL_HELP = ("a name from list-models; several joined by commas (an ensemble); timm:ARCH (any timm model, "
              "e.g. timm:convnext_tiny); or file:PATH?size=224&mean=a/b/c&std=a/b/c (your TorchScript or "
              "torch.export classifier)")


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

    model: str = param("efficientnet_lite0", MODEL_HELP, form=False)
    algorithm: str = param("sga", "", choices=tuple(ALGORITHMS), form=False)
    eps: float | str = param(10 / 255, "budget in pixel units; n/255 accepted", form=False)  # range: by the norm
    norm: str = param("linf", "", choices=NORMS, form=False)
    target: int | None = param(None, "target class index (targeted attack)", form=False)  # range: the classes
    images: str = param("samples", "'samples', 'cifar10-test' (the CIFAR-10 test set, downloaded once), a folder, "
                                   "a .npz or an image file", form=False)
    fit: int | None = param(None, "images to fit δ on (default: half)", 1, 100_000_000,
                            label="Fit images (0 = half)", hint="Images δ is fitted on; the rest are held out.")
    holdout: int | None = param(None, "held-out images to measure on (default: the rest)", 1, 100_000_000, form=False)
    augment: int = param(0, "fit on this many random crop/flip views of each fit image (default 0: off; for a few "
                            "dozen images)", 0, 64, label="Fit on n crops of each image (0 = off)",
                         hint="Random crop + flip views of every fit image instead of the image: for a few dozen "
                              "images, where δ otherwise learns the photos, not the model.")
    holdout_views: int = param(0, "measure on this many random crop/flip views of each held-out image (default 0: the "
                                  "images themselves)", 0, 64,
                               label="Measure on n crops of each held-out image (0 = off)",
                               hint="Finer, steadier fooling ratios from a handful of held-out photos.")
    compile: str = param("auto", "capture the SGA / SGD-UAP gradient step with torch.compile, on CUDA as CUDA graphs "
                                 "(auto: on CUDA only)", choices=COMPILE, label="Compile the step",
                         hint="torch.compile of the SGA / SGD-UAP gradient step; on a GPU it runs as CUDA graphs. "
                              "auto: on for CUDA, off on the CPU (compiling takes about a minute there).")
    keep: str = param("best", "return the δ with the best fit-set fooling ratio at the evaluations, or the last",
                      choices=KEEP, choice_labels={"best": "best δ (fit-set fooling ratio)", "last": "last δ"},
                      hint="best: the δ with the highest fooling ratio on the fit images at the evaluations (never "
                           "chosen on held-out images). last: the final δ; skips the fit-set evaluations, so short "
                           "runs go faster.")
    seed: int = param(0, "", 0, 2**63 - 1, form=False)
    device: str = param("auto", "cpu, cuda or auto", form=False)
    epochs: int | None = param(None, "passes over the fit set (default: the algorithm's)", 1, 100_000_000,
                               label="Epochs (0 = the algorithm's)",
                               hint="Passes over the fit images (UAP: passes of DeepFool accumulation).")
    eval_every: int | None = param(None, "steps between held-out evaluations", 1, 100_000_000,
                                   label="Evaluate every n steps (0 = auto)",
                                   hint="Held-out evaluations; auto gives about 20 per run.")
    precision: str = param("auto", "", choices=PRECISIONS, hint="auto: bf16/fp16 on a GPU, fp32 on the CPU.")
    input_size: int | None = param(None, "override the model's input size (pixels)", 16, 100_000_000,
                                   label="Input size (0 = the model's)",
                                   hint="Smaller inputs run faster on a CPU (the model still works, less well).")
    weights: str | None = param(None, "a local weights file for the model", form=False)
    max_seconds: float | None = param(None, "stop after this many seconds from the start, preparation included, but "
                                            "never before the first step (keeps the best δ)", 0.0,
                                      exclusive_min=True, label="Time limit, s (0 = none)", step=10,
                                      hint="Stop after this long (from the start, preparation included; at least "
                                           "one step is made), keeping the δ so far.")
    max_image_gradients: int | None = param(
        None, "a fair budget across methods: stop once the steps cost this many image-gradients (forward + backward "
              "over one image); without --epochs, as many epochs as it takes", 1, 100_000_000,
        label="Budget, image-gradients (0 = by epochs)", step=100,
        hint="Stop once the steps have cost this many forward + backward passes over single images: equal budgets "
             "compare methods at equal cost.")
    # robust δ by expectation over transformation (uap_core.transforms): off, or the transformation fitted through
    robust: str = param("off", "fit δ through random transformations of the perturbed image (expectation over "
                               "transformation): jpeg, rotation, scale, translation, color, blur, or screen (all of "
                               "them: a photo of a screen); off: the exact pixels", choices=ROBUST_KINDS,
                        label="Robust to (EOT)",
                        hint="Fit δ through a random transformation of every perturbed image at every step, so that "
                             "it survives JPEG, a turned or moved camera, light and blur. Gradient methods only.")
    robust_jpeg_quality: int = param(50, "robust: lowest JPEG quality drawn (uniform up to 95)", 1, 95,
                                     label="Robust: lowest JPEG quality")
    robust_rotation: float = param(10.0, "robust: largest rotation, degrees (uniform in ±)", 0.0, 180.0,
                                   label="Robust: rotation, degrees")
    robust_scale: float = param(0.1, "robust: largest relative scaling (uniform in 1 ± this)", 0.0, 0.9,
                                label="Robust: scale change")
    robust_translation: float = param(0.05, "robust: largest shift, fraction of the side (uniform in ±, each axis)",
                                      0.0, 0.5, label="Robust: shift, fraction of the side")
    robust_brightness: float = param(0.25, "robust: largest brightness change (factor uniform in 1 ± this)", 0.0, 0.9,
                                     label="Robust: brightness change")
    robust_contrast: float = param(0.25, "robust: largest contrast change (factor uniform in 1 ± this)", 0.0, 0.9,
                                   label="Robust: contrast change")
    robust_blur: float = param(1.0, "robust: largest Gaussian blur σ, pixels of the model's input", 0.0, 10.0,
                               label="Robust: blur σ, pixels")
    # the algorithm's own hyperparameters: its Params class declares them (their own options and form)
    params: dict[str, Any] = param({}, "the algorithm's hyperparameters", cli=False, form=False)
    # shared with evaluate and transfer: the command line's streaming options (uap_core.__main__)
    stream: str = param("off", "read the held-out images from disk batch by batch", choices=STREAM_CHOICES, cli=False,
                        form=False)
    workers: int | None = param(None, "DataLoader processes decoding a streamed set", 0, 64, cli=False, form=False)

    def validated(self) -> "RunConfig":
        """A copy with every declared field parsed and checked (eps and the counts from strings too), then the
        checks across fields; ParameterError names the allowed range. The free-text fields (model, images, device,
        weights) are checked where they are resolved: the model registry, the image loaders, the device."""
        cfg = dataclasses.replace(self)
        algorithm = get_algorithm(cfg.algorithm)  # first: the registry's message names the known methods
        for spec in describe(RunConfig):
            value = getattr(cfg, spec["name"])
            if (value is None and spec["optional"]) or (spec["type"] == "str" and not spec["choices"]):
                continue
            setattr(cfg, spec["name"], parse_value(spec, value))
        check_range("eps", cfg.eps, 0.0, 1.0 if cfg.norm == "linf" else 1000.0, exclusive_min=True)
        if distributed.is_active() and not algorithm.supports_distributed:
            raise ParameterError(f"{cfg.algorithm} runs in one process only; under torchrun use sga or sgd_uap")
        spec = get_spec(cfg.model)
        if spec.family == "ensemble" and not algorithm.supports_ensemble:
            raise ParameterError(f"{cfg.algorithm} fits one model at a time; an ensemble ({cfg.model}) needs a "
                                 f"gradient method such as sga or sgd_uap")
        parse_params(algorithm.Params, cfg.params)
        if cfg.robust != "off":
            if algorithm.robust_refusal:
                raise ParameterError(f"{cfg.algorithm} cannot fit a robust δ: {algorithm.robust_refusal}")
            if distributed.is_active():
                raise ParameterError("robust runs in one process only (its random views are drawn from one "
                                     "generator); leave out torchrun or robust")
        if cfg.target is not None:
            if not algorithm.supports_targeted:
                raise ParameterError(f"{cfg.algorithm} is untargeted only; leave the target class empty")
            check_range("target class", cfg.target, 0, spec.num_classes - 1)
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
        """The JSON-able headline figures (the CLI's --json output, plus the artifact path added there). Beside the
        held-out fooling ratio, the fooling rate (1 − accuracy under δ) where the held-out images have true labels,
        else None and ``fooling_rate_reason``."""
        held_out = self.evaluation.as_dict(top=10)
        return {
            "model": self.config.model, "algorithm": self.config.algorithm, "eps": self.config.eps,
            "norm": self.config.norm, "target": self.config.target, "seed": self.config.seed,
            "fooling_ratio": self.evaluation.fooling_ratio, **self.evaluation.fooling_rate_fields(),
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
            "robust": robust_fields(self.config),  # the transformations δ was fitted through ({"kind": "off"})
            # where, when, how long and by which command (a replay of the saved run says so)
            "recorded": run_provenance(self.config, get_algorithm(self.config.algorithm).Params,
                                       self.info.get("device", "cpu"), self.seconds),
        }
