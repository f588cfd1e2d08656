"""The one run interface: the CLI, the UI and the tests all drive a :class:`Run`.

A run loads the model and images, fits a UAP with one algorithm and yields :class:`RunEvent` s as it goes:

    run = Run(RunConfig(model="efficientnet_lite0", algorithm="sga", eps=10/255, images="samples"))
    for event in run.events():          # "start", then "step" / "eval" events, then "done"
        print(event.kind, event.data)
    result = run.result                 # the kept δ, its held-out evaluation, the metric history

``run.stop()`` (from any thread) ends the run after the current step, keeping the δ so far (see ``keep``). The
same seed on the same device gives the same δ.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from . import distributed, memo, metrics
from .algorithms import AttackSetup, UAPAlgorithm, get_algorithm
from .errors import ParameterError
from .jsonable import jsonable
from .models.ensemble import members_of
from .evaluation import Evaluation, evaluate, predict_labels, predict_logits, predict_top1
from .images import STREAM_CHOICES, ImageSet, ImageStream, load_images, open_stream, should_stream
from .models import Classifier, get_spec, load_model, resolve_device
from .params import check_range, parse_number, parse_params

NORMS = ("linf", "l2")
KEEP = ("best", "last")
COMPILE = ("auto", "on", "off")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
FIT_EVAL_LIMIT = 1000  # fit images used to pick the best δ at each evaluation


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



def choose_precision(requested: str, device: torch.device) -> str:
    """auto → bf16 on a CUDA GPU that supports it (else fp16), fp32 on the CPU."""
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def choose_compile(requested: str, device: torch.device) -> bool:
    """auto → compile on CUDA (CUDA graphs pay off at small batches), not on the CPU."""
    return requested == "on" or (requested == "auto" and device.type == "cuda")


def prepare_model(model: Classifier, device: torch.device) -> Classifier:
    """Put a (frozen) model where the attack runs, in channels_last (the images are fed channels_last too): on
    CUDA cuDNN's fastest kernels, on the CPU oneDNN's (measured on 2 cores, EfficientNet-Lite0 at 224 px:
    forward + input gradient 13.8 → 15.8 images/s, forward only 38.6 → 47.2). cuDNN autotuning on CUDA."""
    model = model.to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return model.to(memory_format=torch.channels_last)


class Run:
    """One UAP generation. Iterate :meth:`events` (or call :meth:`run_to_end`); :meth:`stop` from any thread."""

    def __init__(self, config: RunConfig, model: Classifier | None = None, images: ImageSet | None = None) -> None:
        self.config = config.validated()
        self._model = model
        self._images = images
        self._stop = threading.Event()
        self.result: RunResult | None = None
        self.algorithm: UAPAlgorithm | None = None

    def stop(self) -> None:
        """Ask the run to end after the current step; the best δ so far is kept."""
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def run_to_end(self, on_event: Callable[[RunEvent], None] | None = None) -> RunResult:
        for event in self.events():
            if on_event:
                on_event(event)
        assert self.result is not None
        return self.result

    # ------------------------------------------------------------------------------------------ setup
    def _prepare(self) -> None:
        cfg = self.config
        device = distributed.local_device(resolve_device(cfg.device))  # several ranks on CUDA: cuda:LOCAL_RANK
        self.model = prepare_model(self._model or load_model(cfg.model, device, weights=cfg.weights), device)
        self.device = device
        self.precision = choose_precision(cfg.precision, device)
        spec = self.model.spec
        size = cfg.input_size or spec.input_size
        resize = round(size * spec.resize_size / spec.input_size)
        streaming = self._images is None and should_stream(cfg.stream, cfg.images)
        if streaming and cfg.holdout_views:
            raise ParameterError("holdout views need the held-out images in memory: leave out stream (or the views)")
        if streaming:  # listed only: the fit images are decoded below, the held-out ones at every evaluation
            images = open_stream(cfg.images, size, resize, list(spec.class_names))
        else:
            images = self._images or load_images(cfg.images, size, resize, list(spec.class_names))
        if cfg.fit is None and cfg.holdout is None:
            fit, holdout = (len(images) + 1) // 2, len(images) // 2
        else:
            fit = cfg.fit if cfg.fit is not None else len(images) - cfg.holdout
            holdout = cfg.holdout if cfg.holdout is not None else len(images) - fit
        if len(images) < 2:
            raise ParameterError(f"need at least 2 images (1 to fit, 1 held out); the source has {len(images)}")
        self.fit_set, self.holdout_set = images.split(fit, holdout, cfg.seed)
        if isinstance(self.fit_set, ImageStream) and (cfg.augment or not distributed.is_active()):
            self.fit_set = self.fit_set.decode()
        if cfg.augment:
            self.fit_set = self.fit_set.augmented(cfg.augment, cfg.seed)
        if cfg.holdout_views:
            self.holdout_set = self.holdout_set.augmented(cfg.holdout_views, cfg.seed + 1)
        self.fit_shard = None
        if distributed.is_active():  # each rank holds (and decodes) one block of the fit images
            bounds, r = distributed.even_bounds(len(self.fit_set), distributed.world_size()), distributed.rank()
            self.fit_set = self.fit_set.subset(range(bounds[r], bounds[r + 1]))
            if isinstance(self.fit_set, ImageStream):
                self.fit_set = self.fit_set.decode()
            self.fit_shard = distributed.shard_counts(len(self.fit_set))
        self.images = images
        self.generator = torch.Generator().manual_seed(cfg.seed)  # on the CPU: the same draws on every device
        algorithm_class = get_algorithm(cfg.algorithm)
        params = parse_params(algorithm_class.Params, cfg.params)
        data_free = algorithm_class.is_data_free(params)
        # a data-free method is handed no fit images at all (only their shape)
        fit_pixels = self.fit_set.pixels[:0] if data_free else self.fit_set.pixels
        self.fit_pixels = fit_pixels.to(device)
        self.holdout_pixels = self.holdout_set if streaming else self.holdout_set.pixels.to(device)
        members = members_of(self.model)
        # each surrogate's own clean logits (N, M, C); the run picks δ by the ensemble's (mean-logit) prediction
        fit_logits = torch.stack([self._remember("clean logits", m, [self.fit_pixels],
                                                 lambda m=m: predict_logits(m, self.fit_pixels, None, self.precision))
                                  for m in members], 1)
        self.fit_clean = fit_logits.mean(1).argmax(1)
        if len(members) == 1:
            fit_logits = fit_logits[:, 0]
        attack_labels = fit_logits.argmax(-1)
        self.holdout_clean, self.holdout_clean_confidence = self._remember(
            "clean top-1", self.model, [self.holdout_pixels],
            lambda: predict_top1(self.model, self.holdout_pixels, None, self.precision, across_ranks=True,
                                 workers=cfg.workers))
        setup = AttackSetup(self.model, self.fit_pixels, attack_labels, cfg.eps, cfg.norm, cfg.target,
                            self.generator, self.precision, choose_compile(cfg.compile, device),
                            clean_logits=fit_logits if algorithm_class.uses_clean_logits else None,
                            shard=self.fit_shard)
        del fit_logits
        self.algorithm = algorithm_class(setup, params)
        self.params = params
        self.steps_per_epoch = self.algorithm.steps_per_epoch()
        budget_steps = None
        if cfg.max_image_gradients is not None:
            budget_steps = math.ceil(cfg.max_image_gradients / max(1, self.algorithm.image_gradients_per_step()))
        if cfg.epochs is None and budget_steps is not None:
            self.epochs = math.ceil(budget_steps / self.steps_per_epoch)
        else:
            self.epochs = cfg.epochs or algorithm_class.default_epochs
        total = self.epochs * self.steps_per_epoch
        self.total_steps = min(total, budget_steps) if budget_steps is not None else total
        self.keep_best = cfg.keep == "best" and not data_free
        self.eval_every = cfg.eval_every or max(1, self.total_steps // 20)
        noise_generator = torch.Generator(device="cpu").manual_seed(cfg.seed + 1)
        self.random_delta = metrics.random_perturbation(self.fit_pixels.shape[1:], cfg.eps, cfg.norm, noise_generator,
                                                        device)

    def _remember(self, what: str, model: torch.nn.Module, tensors: list, compute: Callable[[], Any]) -> Any:
        """A clean forward pass through the memo (uap_core.memo): a warm server answers a repeated run's clean
        predictions without recomputing them. Streamed sets and several ranks always compute."""
        if distributed.is_active() or not all(isinstance(t, torch.Tensor) for t in tensors):
            return compute()
        return memo.remember(what, model, tensors, (self.precision, self.config.target), compute)

    def _evaluate_holdout(self, delta: torch.Tensor) -> Evaluation:
        return evaluate(self.model, self.holdout_pixels, delta, self.holdout_set.labels, self.holdout_clean,
                        self.config.target, self.precision, clean_confidence=self.holdout_clean_confidence,
                        across_ranks=True, workers=self.config.workers)

    def _fit_fooling_ratio(self, delta: torch.Tensor) -> float:
        if self.fit_shard is not None:  # this rank's part of the first FIT_EVAL_LIMIT fit images; counts summed
            count = min(self.fit_shard.total, FIT_EVAL_LIMIT)
            mine = self.fit_shard.local_prefix(count)
            labels = predict_labels(self.model, self.fit_pixels[:mine], delta, self.precision)
            hits = (labels == self.config.target) if self.config.target is not None else labels != self.fit_clean[:mine]
            (hits,) = distributed.all_reduce_sum([hits.sum().reshape(1).cpu()], "all_reduce of the fit fooled count")
            return (hits.float() / count).item()  # = mean of the 0/1 flags, as in one process
        count = min(len(self.fit_pixels), FIT_EVAL_LIMIT)
        labels = predict_labels(self.model, self.fit_pixels[:count], delta, self.precision)
        if self.config.target is not None:
            return (labels == self.config.target).float().mean().item()
        return metrics.fooling_ratio(self.fit_clean[:count], labels)

    # ------------------------------------------------------------------------------------------ the loop
    def events(self) -> Iterator[RunEvent]:
        """Run, yielding events; sets :attr:`result` before the final "done" event."""
        cfg = self.config
        started = time.perf_counter()
        self._prepare()
        elapsed = lambda: time.perf_counter() - started  # noqa: E731
        random_eval = self._remember("random-noise evaluation", self.model,
                                     [self.holdout_pixels, self.random_delta, self.holdout_set.labels],
                                     lambda: self._evaluate_holdout(self.random_delta))
        clean_eval_accuracy = random_eval.clean_accuracy  # = accuracy(k(x), labels) on the held-out images
        info = {
            "device": str(self.device), "precision": self.precision, "compiled": self.algorithm.compiled,
            "algorithm_family": self.algorithm.family, "keep": "best" if self.keep_best else "last",
            "fit_images": self.fit_shard.total if self.fit_shard else len(self.fit_pixels),  # 0 when data-free
            "heldout_images": len(self.holdout_set), "image_source": self.images.source,
            "skipped_images": [dataclasses.asdict(s) for s in self.images.skipped],
            "input_size": list(self.fit_pixels.shape[2:]), "epochs": self.epochs,
            "steps_per_epoch": self.steps_per_epoch, "eval_every": self.eval_every,
            "params": dataclasses.asdict(self.params), "algorithm_title": self.algorithm.title,
            "model_title": self.model.spec.title, "surrogates": [m.spec.name for m in members_of(self.model)],
        }
        if distributed.is_active():
            info.update(world_size=distributed.world_size(), backend=distributed.backend())
        if isinstance(self.holdout_pixels, ImageStream):
            info.update(streamed=True, heldout_images=random_eval.count)
        history: list[dict[str, Any]] = []
        start_event = RunEvent("start", 0, 0, elapsed(), {
            **info, "total_steps": self.total_steps,
            "planned_image_gradients": (cfg.max_image_gradients
                                        or self.total_steps * self.algorithm.image_gradients_per_step()),
            "random_fooling_ratio": random_eval.fooling_ratio, "clean_accuracy": clean_eval_accuracy})
        history.append(start_event.as_dict())
        yield start_event

        best = {"fit_fooling_ratio": -1.0, "delta": self.algorithm.delta.clone(), "step": 0}
        step, epoch, reason, spent = 0, 0, "completed", 0
        last_eval_step, last_held_out = -1, None

        def evaluation_event() -> RunEvent:
            nonlocal last_eval_step, last_held_out
            delta = self.algorithm.delta
            held_out = self._evaluate_holdout(delta)
            if self.keep_best:
                fit_ratio = self._fit_fooling_ratio(delta)
                is_best = fit_ratio > best["fit_fooling_ratio"]
            else:
                fit_ratio, is_best = float("nan"), True
            if is_best:
                best.update(fit_fooling_ratio=fit_ratio, delta=delta.clone(), step=step)
            last_eval_step, last_held_out = step, held_out
            data = {"heldout": held_out.as_dict(top=10), "fooling_ratio": held_out.fooling_ratio,
                    "fit_fooling_ratio": fit_ratio, "is_best": is_best, "image_gradients_total": spent,
                    "dominant_share": held_out.as_dict()["dominant_share"]}
            return RunEvent("eval", step, epoch, elapsed(), data)

        try:
            for epoch in range(1, self.epochs + 1):
                for batch in self.algorithm.epoch_batches():
                    stop, late = self._stop.is_set(), cfg.max_seconds is not None and elapsed() > cfg.max_seconds
                    if distributed.is_active():  # every rank ends at the same step
                        late = distributed.any_rank(stop or late) and not stop
                    if stop:
                        reason = "stopped"
                        break
                    if late:
                        reason = "time limit"
                        break
                    step_started = time.perf_counter()
                    stats = self._step_with_backoff(batch)
                    step += 1
                    spent += int(stats["image_gradients"])
                    stats["image_gradients_total"] = spent
                    seconds = time.perf_counter() - step_started
                    stats["images_per_second"] = stats["image_gradients"] / seconds if seconds > 0 else float("nan")
                    stats["step_seconds"] = seconds
                    event = RunEvent("step", step, epoch, elapsed(), stats)
                    history.append(event.as_dict())
                    yield event
                    if step % self.eval_every == 0 or step == 1:  # step 1: an early point on the charts
                        event = evaluation_event()
                        history.append(event.as_dict())
                        yield event
                    if cfg.max_image_gradients is not None and spent >= cfg.max_image_gradients:
                        reason = "budget"
                        break
                if reason != "completed":
                    break
                if self.algorithm.end_epoch():
                    reason = "converged"
                    break
        except torch.OutOfMemoryError:
            if distributed.is_active():  # the other ranks wait in a collective: end the whole run
                raise
            reason = "out of memory"
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

        if last_eval_step != step:
            event = evaluation_event()
            history.append(event.as_dict())
            yield event
        info["image_gradients"] = spent
        if self.algorithm.compile_error:
            info.update(compiled=False, compile_error=self.algorithm.compile_error)
        best_delta = best["delta"]
        final = last_held_out if best["step"] == last_eval_step else self._evaluate_holdout(best_delta)
        self.result = RunResult(
            config=cfg, delta=best_delta.detach().cpu(), last_delta=self.algorithm.delta.detach().cpu(),
            best_step=best["step"], evaluation=final, random_evaluation=random_eval, steps=step,
            seconds=elapsed(), reason=reason, history=history, info=info)
        yield RunEvent("done", step, epoch, elapsed(), self.result.summary())

    def _step_with_backoff(self, batch: torch.Tensor) -> dict[str, Any]:
        """One algorithm step; on out-of-memory halve the chunk of images per forward and retry (down to 1). The
        retry draws the same random mini-batches (the generator is rewound), so it makes the step it would have made."""
        draws = self.generator.get_state()
        while True:
            try:
                return self.algorithm.step(batch)
            except torch.OutOfMemoryError:
                self.generator.set_state(draws)
                current = self.algorithm.chunk_size or len(batch)
                if current <= 1:
                    raise
                self.algorithm.chunk_size = max(1, current // 2)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
