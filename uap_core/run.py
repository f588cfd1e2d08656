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
import threading
import time
from typing import Any, Callable, Iterator

import torch

from . import distributed
from .algorithms import UAPAlgorithm
from .evaluation import Evaluation
from .images import ImageSet, ImageStream
from .models import Classifier
from .models.ensemble import members_of
from .run_setup import (FIT_EVAL_LIMIT, Prepared, choose_compile, choose_precision, prepare,  # noqa: F401
                        prepare_model)
from .run_types import COMPILE, KEEP, NORMS, PRECISIONS, RunConfig, RunEvent, RunResult  # noqa: F401

# what a prepared run exposes as attributes of the Run (None before the first event)
PREPARED = ("model", "device", "precision", "images", "fit_set", "holdout_set", "fit_shard", "generator", "params",
            "algorithm", "fit_pixels", "holdout_pixels", "fit_clean", "steps_per_epoch", "epochs", "total_steps",
            "keep_best", "eval_every", "random_delta")


class DeltaKeeper:
    """The δ a run returns: the one with the highest fit-set fooling ratio at the evaluations (``keep_best``), or
    the last one evaluated. Also remembers the last evaluation, so the kept δ is not measured twice."""

    def __init__(self, delta: torch.Tensor, keep_best: bool) -> None:
        self.keep_best = keep_best
        self.fit_fooling_ratio, self.delta, self.step = -1.0, delta.clone(), 0
        self.last_step, self.last_held_out = -1, None

    def record(self, step: int, delta: torch.Tensor, held_out: Evaluation, fit_fooling_ratio: float) -> bool:
        """Note an evaluation of ``delta`` at ``step``; True when it becomes the kept δ."""
        is_best = fit_fooling_ratio > self.fit_fooling_ratio if self.keep_best else True
        if is_best:
            self.fit_fooling_ratio, self.delta, self.step = fit_fooling_ratio, delta.clone(), step
        self.last_step, self.last_held_out = step, held_out
        return is_best


class Run:
    """One UAP generation. Iterate :meth:`events` (or call :meth:`run_to_end`); :meth:`stop` from any thread."""

    def __init__(self, config: RunConfig, model: Classifier | None = None, images: ImageSet | None = None) -> None:
        self.config = config.validated()
        self._model = model
        self._images = images
        self._stop = threading.Event()
        self.result: RunResult | None = None
        self.prepared: Prepared | None = None

    def __getattr__(self, name: str) -> Any:  # run.model, run.algorithm, run.holdout_set…: the prepared run's
        if name in PREPARED:
            prepared = self.__dict__.get("prepared")
            return None if prepared is None else getattr(prepared, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

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

    # ------------------------------------------------------------------------------------------ the loop
    def events(self) -> Iterator[RunEvent]:
        """Run, yielding events; sets :attr:`result` before the final "done" event."""
        cfg = self.config
        self._started = time.perf_counter()
        p = self.prepared = prepare(cfg, self._model, self._images)
        random_eval = p.remember("random-noise evaluation", p.model, [p.holdout_pixels, p.random_delta,
                                                                      p.holdout_set.labels],
                                 lambda: p.evaluate_holdout(p.random_delta))
        info = self._info(random_eval)
        history: list[dict[str, Any]] = []

        def emit(event: RunEvent) -> RunEvent:  # every event but "done" goes into the history
            history.append(event.as_dict())
            return event

        yield emit(RunEvent("start", 0, 0, self._elapsed(), {
            **info, "total_steps": p.total_steps,
            "planned_image_gradients": (cfg.max_image_gradients
                                        or p.total_steps * p.algorithm.image_gradients_per_step()),
            "random_fooling_ratio": random_eval.fooling_ratio, "clean_accuracy": random_eval.clean_accuracy}))
        keeper = DeltaKeeper(p.algorithm.delta, p.keep_best)
        step, epoch, reason, spent = 0, 0, "completed", 0
        try:
            for epoch in range(1, p.epochs + 1):
                for batch in p.algorithm.epoch_batches():
                    reason = self._reason_to_end() or reason
                    if reason != "completed":
                        break
                    stats = self._step(batch, spent)
                    step, spent = step + 1, stats["image_gradients_total"]
                    yield emit(RunEvent("step", step, epoch, self._elapsed(), stats))
                    if step % p.eval_every == 0 or step == 1:  # step 1: an early point on the charts
                        yield emit(self._evaluation(keeper, step, epoch, spent))
                    if cfg.max_image_gradients is not None and (spent >= cfg.max_image_gradients
                                                                or step >= p.total_steps):  # nominal costs (UAP)
                        reason = "budget"
                        break
                if reason != "completed":
                    break
                if p.algorithm.end_epoch():
                    reason = "converged"
                    break
        except torch.OutOfMemoryError:
            if distributed.is_active():  # the other ranks wait in a collective: end the whole run
                raise
            reason = "out of memory"
            if p.device.type == "cuda":
                torch.cuda.empty_cache()

        if keeper.last_step != step:
            yield emit(self._evaluation(keeper, step, epoch, spent))
        info["image_gradients"] = spent
        if p.algorithm.compile_error:
            info.update(compiled=False, compile_error=p.algorithm.compile_error)
        final = keeper.last_held_out if keeper.step == keeper.last_step else p.evaluate_holdout(keeper.delta)
        self.result = RunResult(
            config=cfg, delta=keeper.delta.detach().cpu(), last_delta=p.algorithm.delta.detach().cpu(),
            best_step=keeper.step, evaluation=final, random_evaluation=random_eval, steps=step,
            seconds=self._elapsed(), reason=reason, history=history, info=info)
        yield RunEvent("done", step, epoch, self._elapsed(), self.result.summary())

    def _elapsed(self) -> float:
        return time.perf_counter() - self._started

    def _info(self, random_eval: Evaluation) -> dict[str, Any]:
        """The run's description: the "start" event's data and the result's info."""
        p = self.prepared
        info = {
            "device": str(p.device), "precision": p.precision, "compiled": p.algorithm.compiled,
            "algorithm_family": p.algorithm.family, "keep": "best" if p.keep_best else "last",
            "fit_images": p.fit_shard.total if p.fit_shard else len(p.fit_pixels),  # 0 when data-free
            "heldout_images": len(p.holdout_set), "image_source": p.images.source,
            "skipped_images": [dataclasses.asdict(s) for s in p.images.skipped],
            "input_size": list(p.fit_pixels.shape[2:]), "epochs": p.epochs,
            "steps_per_epoch": p.steps_per_epoch, "eval_every": p.eval_every,
            "params": dataclasses.asdict(p.params), "algorithm_title": p.algorithm.title,
            "model_title": p.model.spec.title, "surrogates": [m.spec.name for m in members_of(p.model)],
        }
        if distributed.is_active():
            info.update(world_size=distributed.world_size(), backend=distributed.backend())
        if isinstance(p.holdout_pixels, ImageStream):
            info.update(streamed=True, heldout_images=random_eval.count)
        return info

    def _reason_to_end(self) -> str | None:
        """"stopped" (stop()), "time limit" (max_seconds) or None (go on); under torchrun every rank agrees."""
        stop = self._stop.is_set()
        late = self.config.max_seconds is not None and self._elapsed() > self.config.max_seconds
        if distributed.is_active():  # every rank ends at the same step
            late = distributed.any_rank(stop or late) and not stop
        return "stopped" if stop else "time limit" if late else None

    def _evaluation(self, keeper: DeltaKeeper, step: int, epoch: int, spent: int) -> RunEvent:
        """Measure the current δ on the held-out images (and, to keep the best, on the fit images)."""
        p = self.prepared
        delta = p.algorithm.delta
        held_out = p.evaluate_holdout(delta)
        fit_ratio = p.fit_fooling_ratio(delta) if p.keep_best else float("nan")
        is_best = keeper.record(step, delta, held_out, fit_ratio)
        return RunEvent("eval", step, epoch, self._elapsed(), {
            "heldout": held_out.as_dict(top=10), "fooling_ratio": held_out.fooling_ratio,
            "fit_fooling_ratio": fit_ratio, "is_best": is_best, "image_gradients_total": spent,
            "dominant_share": held_out.as_dict()["dominant_share"]})

    def _step(self, batch: torch.Tensor, spent: int) -> dict[str, Any]:
        """One timed algorithm step: its statistics plus image_gradients_total (``spent`` before it + its own),
        images_per_second and step_seconds."""
        started = time.perf_counter()
        stats = self._step_with_backoff(batch)
        stats["image_gradients_total"] = spent + int(stats["image_gradients"])
        seconds = time.perf_counter() - started
        stats["images_per_second"] = stats["image_gradients"] / seconds if seconds > 0 else float("nan")
        stats["step_seconds"] = seconds
        return stats

    def _step_with_backoff(self, batch: torch.Tensor) -> dict[str, Any]:
        """One algorithm step; on out-of-memory halve the chunk of images per forward and retry (down to 1). The
        retry draws the same random mini-batches (the generator is rewound), so it makes the step it would have made."""
        algorithm: UAPAlgorithm = self.prepared.algorithm
        draws = self.prepared.generator.get_state()
        while True:
            try:
                return algorithm.step(batch)
            except torch.OutOfMemoryError:
                self.prepared.generator.set_state(draws)
                current = algorithm.chunk_size or len(batch)
                if current <= 1:
                    raise
                algorithm.chunk_size = max(1, current // 2)
                if self.prepared.device.type == "cuda":
                    torch.cuda.empty_cache()
