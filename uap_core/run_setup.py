"""The preparation of a run, before its first step: device and precision, the images and their fit / held-out
split (views, streaming, one block per rank under torchrun), the clean predictions, the algorithm and its budget.

:func:`prepare` turns a validated :class:`~uap_core.run_types.RunConfig` into a :class:`Prepared` run; the loop in
:mod:`uap_core.run` steps its algorithm and measures δ through :meth:`Prepared.evaluate_holdout` and
:meth:`Prepared.fit_fooling_ratio`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from . import distributed, memo, metrics
from .algorithms import AttackSetup, UAPAlgorithm, get_algorithm
from .transforms import Robustness
from .errors import ParameterError
from .evaluation import Evaluation, evaluate, predict_labels, predict_logits, predict_top1
from .images import ImageSet, ImageStream, load_images, model_geometry, open_stream, should_stream
from .models import Classifier, load_model, resolve_device
from .models.ensemble import members_of
from .params import parse_params
from .run_types import RunConfig

FIT_EVAL_LIMIT = 1000  # fit images used to pick the best δ at each evaluation


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


def remember(what: str, model: torch.nn.Module, tensors: list, precision: str, target: int | None,
             compute: Callable[[], Any]) -> Any:
    """A clean forward pass through the memo (uap_core.memo): a warm server answers a repeated run's clean
    predictions without recomputing them. Streamed sets and several ranks always compute."""
    if distributed.is_active() or not all(isinstance(t, torch.Tensor) for t in tensors):
        return compute()
    return memo.remember(what, model, tensors, (precision, target), compute)


@dataclass
class Prepared:
    """A run ready for its first step. fit_set / holdout_set: the split (after views and sharding); fit_pixels:
    the fit images on the device ((0, 3, H, W) for a data-free method: it never reads them); holdout_pixels: the
    held-out images on the device, or their ImageStream; fit_clean (N,) / holdout_clean (M,): clean top-1 labels;
    total_steps: the steps the run makes at most (epochs × steps per epoch, or fewer under a budget)."""

    config: RunConfig
    model: Classifier
    device: torch.device
    precision: str
    images: ImageSet | ImageStream
    fit_set: ImageSet
    holdout_set: ImageSet | ImageStream
    fit_shard: Any  # distributed.ShardCounts under torchrun, else None
    generator: torch.Generator
    params: Any
    algorithm: UAPAlgorithm
    fit_pixels: torch.Tensor
    holdout_pixels: torch.Tensor | ImageStream
    fit_clean: torch.Tensor
    holdout_clean: torch.Tensor
    holdout_clean_confidence: torch.Tensor
    steps_per_epoch: int
    epochs: int
    total_steps: int
    keep_best: bool
    eval_every: int
    random_delta: torch.Tensor

    def remember(self, what: str, model: torch.nn.Module, tensors: list, compute: Callable[[], Any]) -> Any:
        return remember(what, model, tensors, self.precision, self.config.target, compute)

    def evaluate_holdout(self, delta: torch.Tensor) -> Evaluation:
        """δ (3, H, W) on the held-out images (summed over the ranks under torchrun)."""
        return evaluate(self.model, self.holdout_pixels, delta, self.holdout_set.labels, self.holdout_clean,
                        self.config.target, self.precision, clean_confidence=self.holdout_clean_confidence,
                        across_ranks=True, workers=self.config.workers)

    def fit_fooling_ratio(self, delta: torch.Tensor) -> float:
        """The fooling ratio (or target success) of δ on the first FIT_EVAL_LIMIT fit images: what keep="best"
        chooses by (never the held-out images)."""
        target = self.config.target
        if self.fit_shard is not None:  # this rank's part of the first FIT_EVAL_LIMIT fit images; counts summed
            count = min(self.fit_shard.total, FIT_EVAL_LIMIT)
            mine = self.fit_shard.local_prefix(count)
            labels = predict_labels(self.model, self.fit_pixels[:mine], delta, self.precision)
            hits = (labels == target) if target is not None else labels != self.fit_clean[:mine]
            (hits,) = distributed.all_reduce_sum([hits.sum().reshape(1).cpu()], "all_reduce of the fit fooled count")
            return (hits.float() / count).item()  # = mean of the 0/1 flags, as in one process
        count = min(len(self.fit_pixels), FIT_EVAL_LIMIT)
        labels = predict_labels(self.model, self.fit_pixels[:count], delta, self.precision)
        if target is not None:
            return (labels == target).float().mean().item()
        return metrics.fooling_ratio(self.fit_clean[:count], labels)


def prepare(cfg: RunConfig, model: Classifier | None = None, images: ImageSet | None = None) -> Prepared:
    """Load (or take) the model and images, split them, compute the clean predictions and build the algorithm.
    ``cfg`` must be validated (:meth:`RunConfig.validated`)."""
    device = distributed.local_device(resolve_device(cfg.device))  # several ranks on CUDA: cuda:LOCAL_RANK
    model = prepare_model(model or load_model(cfg.model, device, weights=cfg.weights), device)
    precision = choose_precision(cfg.precision, device)
    streaming = images is None and should_stream(cfg.stream, cfg.images)
    images = images or _open_images(cfg, model, streaming)
    fit_set, holdout_set, fit_shard = _split(cfg, images)
    generator = torch.Generator().manual_seed(cfg.seed)  # on the CPU: the same draws on every device
    algorithm_class = get_algorithm(cfg.algorithm)
    params = parse_params(algorithm_class.Params, cfg.params)
    data_free = algorithm_class.is_data_free(params)
    # a data-free method is handed no fit images at all (only their shape)
    fit_pixels = (fit_set.pixels[:0] if data_free else fit_set.pixels).to(device)
    holdout_pixels = holdout_set if streaming else holdout_set.pixels.to(device)
    members = members_of(model)
    # each surrogate's own clean logits (N, M, C); the run picks δ by the ensemble's (mean-logit) prediction
    fit_logits = torch.stack([remember("clean logits", m, [fit_pixels], precision, cfg.target,
                                       lambda m=m: predict_logits(m, fit_pixels, None, precision))
                              for m in members], 1)
    fit_clean = fit_logits.mean(1).argmax(1)
    if len(members) == 1:
        fit_logits = fit_logits[:, 0]
    attack_labels = fit_logits.argmax(-1)
    holdout_clean, holdout_clean_confidence = remember(
        "clean top-1", model, [holdout_pixels], precision, cfg.target,
        lambda: predict_top1(model, holdout_pixels, None, precision, across_ranks=True, workers=cfg.workers))
    setup = AttackSetup(model, fit_pixels, attack_labels, cfg.eps, cfg.norm, cfg.target, generator, precision,
                        choose_compile(cfg.compile, device),
                        clean_logits=fit_logits if algorithm_class.uses_clean_logits else None, shard=fit_shard,
                        robust=Robustness.from_config(cfg))
    del fit_logits
    algorithm = algorithm_class(setup, params)
    steps_per_epoch = algorithm.steps_per_epoch()
    epochs, total_steps = _budget(cfg, algorithm, steps_per_epoch)
    algorithm.plan(epochs)
    noise_generator = torch.Generator(device="cpu").manual_seed(cfg.seed + 1)
    random_delta = metrics.random_perturbation(fit_pixels.shape[1:], cfg.eps, cfg.norm, noise_generator, device)
    return Prepared(
        config=cfg, model=model, device=device, precision=precision, images=images, fit_set=fit_set,
        holdout_set=holdout_set, fit_shard=fit_shard, generator=generator, params=params, algorithm=algorithm,
        fit_pixels=fit_pixels, holdout_pixels=holdout_pixels, fit_clean=fit_clean, holdout_clean=holdout_clean,
        holdout_clean_confidence=holdout_clean_confidence, steps_per_epoch=steps_per_epoch, epochs=epochs,
        total_steps=total_steps, keep_best=cfg.keep == "best" and not data_free,
        eval_every=cfg.eval_every or max(1, total_steps // 20), random_delta=random_delta)


def _open_images(cfg: RunConfig, model: Classifier, streaming: bool) -> ImageSet | ImageStream:
    """The configured images at the model's input geometry; streamed: only listed (the fit images are decoded by
    :func:`_split`, the held-out ones at every evaluation)."""
    spec = model.spec
    size, resize = model_geometry(spec.input_size, spec.resize_size, cfg.input_size)
    if streaming and cfg.holdout_views:
        raise ParameterError("holdout views need the held-out images in memory: leave out stream (or the views)")
    load = open_stream if streaming else load_images
    return load(cfg.images, size, resize, list(spec.class_names))


def _split(cfg: RunConfig, images: ImageSet | ImageStream) -> tuple[ImageSet, Any, Any]:
    """(fit set, held-out set, this rank's fit shard or None): the seeded split, then the views (drawn after the
    split, so no photo is on both sides), then one block of the fit images per rank under torchrun."""
    if cfg.fit is None and cfg.holdout is None:
        fit, holdout = (len(images) + 1) // 2, len(images) // 2
    else:
        fit = cfg.fit if cfg.fit is not None else len(images) - cfg.holdout
        holdout = cfg.holdout if cfg.holdout is not None else len(images) - fit
    if len(images) < 2:
        raise ParameterError(f"need at least 2 images (1 to fit, 1 held out); the source has {len(images)}")
    fit_set, holdout_set = images.split(fit, holdout, cfg.seed)
    if isinstance(fit_set, ImageStream) and (cfg.augment or not distributed.is_active()):
        fit_set = fit_set.decode()
    if cfg.augment:
        fit_set = fit_set.augmented(cfg.augment, cfg.seed)
    if cfg.holdout_views:
        holdout_set = holdout_set.augmented(cfg.holdout_views, cfg.seed + 1)
    if not distributed.is_active():
        return fit_set, holdout_set, None
    # each rank holds (and decodes) one block of the fit images
    bounds, r = distributed.even_bounds(len(fit_set), distributed.world_size()), distributed.rank()
    fit_set = fit_set.subset(range(bounds[r], bounds[r + 1]))
    if isinstance(fit_set, ImageStream):
        fit_set = fit_set.decode()
    return fit_set, holdout_set, distributed.shard_counts(len(fit_set))


def _budget(cfg: RunConfig, algorithm: UAPAlgorithm, steps_per_epoch: int) -> tuple[int, int]:
    """(epochs, total steps): the configured epochs (else the algorithm's default), or — under
    ``max_image_gradients`` without epochs — as many epochs as the budget needs; the budget caps the steps.

    The budget is counted step by step with each step's own cost (:meth:`UAPAlgorithm.step_costs`: a shorter last
    batch costs less), so the total is the step at which the run's image-gradients first reach the budget — the
    step the run stops at, never one before it (the old count, ceil(budget / cost of a full batch), announced
    60 steps for a run that took 63). Where a step's cost depends on δ (UAP) the costs are nominal and the run
    ends at whichever comes first, the budget spent or the total."""
    epochs = cfg.epochs or (None if cfg.max_image_gradients is not None else type(algorithm).default_epochs)
    if cfg.max_image_gradients is None:
        return epochs, epochs * steps_per_epoch
    costs = [max(1, int(c)) for c in algorithm.step_costs()] or [1]
    full_epochs = (cfg.max_image_gradients - 1) // sum(costs)  # epochs that end before the budget is reached
    left, steps = cfg.max_image_gradients - full_epochs * sum(costs), 0
    while left > 0:
        left, steps = left - costs[steps], steps + 1
    budget_steps = full_epochs * len(costs) + steps
    if epochs is None:
        return full_epochs + 1, budget_steps
    return epochs, min(epochs * steps_per_epoch, budget_steps)
