"""The one run interface: the CLI, the UI and the tests all drive a :class:`Run`.

A run loads the model and images, fits a UAP with one algorithm and yields :class:`RunEvent` s as it goes:

    run = Run(RunConfig(model="efficientnet_lite0", algorithm="sga", eps=10/255, images="samples"))
    for event in run.events():          # "start", then "step" / "eval" events, then "done"
        print(event.kind, event.data)
    result = run.result                 # the kept δ, its held-out evaluation, the metric history

``run.stop()`` (from any thread) ends the run after the current step, keeping the δ so far (see ``keep``). The
same seed on the same device gives the same δ.

Long runs: ``Run(config, checkpoints=CheckpointPolicy(path, every_steps=50))`` writes a checkpoint (see
:mod:`uap_core.checkpoint`) every 50 steps, when stopped or out of time, and when asked (``run.request_checkpoint()``,
from any thread); ``Run.from_checkpoint(path)`` continues such a run — on a CPU with the very δ and history an
uninterrupted run has. A resumed run yields the saved events again first (the "start" event with
``resumed_from_step``), then goes on.
"""


from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from . import distributed
from .algorithms import UAPAlgorithm
from .checkpoint import CheckpointPolicy, RunCheckpoint, encode_checkpoint, load_checkpoint, model_digest
from .errors import ParameterError
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

    def state_dict(self) -> dict[str, Any]:
        """The kept δ, its step and fit-set fooling ratio, and the step last evaluated (its evaluation is measured
        again when needed: the same δ gives the same evaluation)."""
        return {"delta": self.delta.clone(), "fit_fooling_ratio": self.fit_fooling_ratio, "step": self.step,
                "last_step": self.last_step}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.delta = state["delta"].to(device, copy=True)
        self.fit_fooling_ratio, self.step = float(state["fit_fooling_ratio"]), int(state["step"])
        self.last_step, self.last_held_out = int(state["last_step"]), None


@dataclasses.dataclass
class LoopPosition:
    """Where the loop stands between two steps: in ``epoch`` (1-based), ``done`` of its ``batches`` (fit-image
    indices, drawn at the epoch's start) are done — all of them: the epoch's end (``end_epoch``) comes next."""

    epoch: int = 1
    batches: list[torch.Tensor] | None = None  # None: draw them when the epoch starts
    done: int = 0


class Run:
    """One UAP generation. Iterate :meth:`events` (or call :meth:`run_to_end`); :meth:`stop` from any thread."""

    def __init__(self, config: RunConfig, model: Classifier | None = None, images: ImageSet | None = None, *,
                 checkpoints: CheckpointPolicy | None = None, resume: RunCheckpoint | None = None) -> None:
        """checkpoints: when and where to write checkpoints (None: never); resume: a checkpoint of this very run
        to continue from (ParameterError, one line, when ``config`` asks for another run)."""
        self.config = config.validated()
        self._model = model
        self._images = images
        self._stop = threading.Event()
        self.result: RunResult | None = None
        self.prepared: Prepared | None = None
        self.checkpoints = checkpoints
        self._resume = resume
        self._checkpoint_requested = threading.Event()
        self._model_digest: str | None = None
        if (checkpoints is not None or resume is not None) and distributed.is_active():
            raise ParameterError("checkpoints are written and resumed by one process; under torchrun leave out "
                                 "--checkpoint-every and --resume")
        if resume is not None:
            resume.check_config(self.config)
            if checkpoints is not None and checkpoints.written_step is None and checkpoints.path.exists() and \
                    checkpoints.path.samefile(resume.path):
                checkpoints.written_step = resume.step  # until the next one, the file holds the resumed step

    @classmethod
    def from_checkpoint(cls, path: str | Path, changes: dict[str, Any] | None = None,
                        model: Classifier | None = None, images: ImageSet | None = None,
                        checkpoints: CheckpointPolicy | None = None) -> "Run":
        """The run saved at ``path``, ready to continue. changes: settings to change — only where, how and how long
        it runs (``checkpoint.MAY_CHANGE``: device, precision, compile, max_seconds, stream, workers); any other that
        differs from the checkpoint's is refused with one line (ParameterError)."""
        checkpoint = load_checkpoint(path)
        return cls(checkpoint.resumed_config(changes), model, images, checkpoints=checkpoints, resume=checkpoint)

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

    def request_checkpoint(self) -> None:
        """Ask for a checkpoint after the current step (from any thread; needs ``checkpoints``)."""
        if self.checkpoints is None:
            raise ValueError("this run has no checkpoint file (Run(..., checkpoints=CheckpointPolicy(path)))")
        self._checkpoint_requested.set()

    def run_to_end(self, on_event: Callable[[RunEvent], None] | None = None) -> RunResult:
        for event in self.events():
            if on_event:
                on_event(event)
        assert self.result is not None
        return self.result

    def warm(self) -> None:
        """Make, through the memo (:mod:`uap_core.memo`), the forward passes this run makes before its first step
        that do not depend on δ — the clean predictions of the fit and held-out images and the random-noise
        evaluation — without stepping. Run with the same model object and images later (a server warming its demo
        when the page opens), the run goes straight to its first step; started while the warming is still going,
        it waits for those values instead of computing them twice. Does nothing useful for inputs the memo does
        not keep (on a GPU, streamed, too large)."""
        _random_noise_evaluation(prepare(self.config, self._model, self._images))

    # ------------------------------------------------------------------------------------------ the loop
    def events(self) -> Iterator[RunEvent]:
        """Run, yielding events; sets :attr:`result` before the final "done" event."""
        cfg = self.config
        self._started = time.perf_counter()
        p = self.prepared = prepare(cfg, self._model, self._images)
        random_eval = _random_noise_evaluation(p)
        info = self._info(random_eval)
        history: list[dict[str, Any]] = []

        def emit(event: RunEvent) -> RunEvent:  # every event but "done" goes into the history
            history.append(event.as_dict())
            return event

        start = RunEvent("start", 0, 0, self._elapsed(), {
            **info, "total_steps": p.total_steps,
            "planned_image_gradients": (cfg.max_image_gradients
                                        or p.total_steps * p.algorithm.image_gradients_per_step()),
            "random_fooling_ratio": random_eval.fooling_ratio, "clean_accuracy": random_eval.clean_accuracy})
        keeper = DeltaKeeper(p.algorithm.delta, p.keep_best)
        step, epoch, reason, spent = 0, 0, "completed", 0
        at = LoopPosition()
        if self._resume is None:
            yield emit(start)
        else:  # the saved events again (not added twice), then on from the saved step
            step, spent, at = self._restore(keeper, history)
            yield from self._replay(history, start)
        try:
            for epoch in range(at.epoch, p.epochs + 1):
                if epoch > at.epoch or at.batches is None:
                    at = LoopPosition(epoch, p.algorithm.epoch_batches())
                for batch in at.batches[at.done:]:
                    reason = self._reason_to_end(step) or reason
                    if reason != "completed":
                        break
                    stats = self._step(batch, spent)
                    step, spent, at.done = step + 1, stats["image_gradients_total"], at.done + 1
                    yield emit(RunEvent("step", step, epoch, self._elapsed(), stats))
                    if step % p.eval_every == 0 or step == 1:  # step 1: an early point on the charts
                        yield emit(self._evaluation(keeper, step, epoch, spent))
                    if cfg.max_image_gradients is not None and (spent >= cfg.max_image_gradients
                                                                or step >= p.total_steps):  # nominal costs (UAP)
                        reason = "budget"
                        break
                    if self.checkpoints is not None and (self.checkpoints.due(step)
                                                         or self._checkpoint_requested.is_set()):
                        self._write_checkpoint(at, step, spent, keeper, history)
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
        if self.checkpoints is not None and reason in ("stopped", "time limit"):  # resumable where it stopped
            self._write_checkpoint(at, step, spent, keeper, history)

        if keeper.last_step != step:
            yield emit(self._evaluation(keeper, step, epoch, spent))
        info["image_gradients"] = spent
        if p.algorithm.compile_error:
            info.update(compiled=False, compile_error=p.algorithm.compile_error)
        final = (keeper.last_held_out if keeper.step == keeper.last_step and keeper.last_held_out is not None
                 else p.evaluate_holdout(keeper.delta))
        self.result = RunResult(
            config=cfg, delta=keeper.delta.detach().cpu(), last_delta=p.algorithm.delta.detach().cpu(),
            best_step=keeper.step, evaluation=final, random_evaluation=random_eval, steps=step,
            seconds=self._elapsed(), reason=reason, history=history, info=info)
        yield RunEvent("done", step, epoch, self._elapsed(), self.result.summary())

    # ------------------------------------------------------------------------------------------ checkpoints
    def checkpoint_state(self, at: LoopPosition, step: int, spent: int, keeper: DeltaKeeper,
                         history: list[dict[str, Any]]) -> dict[str, Any]:
        """The run's state between two steps (what :mod:`uap_core.checkpoint` saves): the loop's position, the
        counters, the seeded generator, the kept δ, the history and the method's own state."""
        p = self.prepared
        batches = at.batches or []
        return {
            "run": {"step": step, "epoch": at.epoch, "done": at.done, "spent": spent, "elapsed": self._elapsed(),
                    "batches": torch.cat(batches).cpu() if batches else torch.zeros(0, dtype=torch.int64),
                    "batch_sizes": [len(b) for b in batches], "generator": p.generator.get_state(),
                    "keeper": keeper.state_dict(), "total_steps": p.total_steps,
                    "input_size": list(p.fit_pixels.shape[1:])},
            "history": history,
            "algorithm": p.algorithm.state_dict(),
        }

    def _digest(self) -> str:
        if self._model_digest is None:
            self._model_digest = model_digest(self.prepared.model)
        return self._model_digest

    def _write_checkpoint(self, at: LoopPosition, step: int, spent: int, keeper: DeltaKeeper,
                          history: list[dict[str, Any]]) -> None:
        self._checkpoint_requested.clear()
        state = self.checkpoint_state(at, step, spent, keeper, history)
        data = encode_checkpoint(self.config, state, self._digest(), self.checkpoints.every)
        self.checkpoints.write(data, step)

    def _restore(self, keeper: DeltaKeeper, history: list[dict[str, Any]]) -> tuple[int, int, LoopPosition]:
        """Put the prepared run where the checkpoint left it: (step, image-gradients spent, loop position)."""
        p, checkpoint = self.prepared, self._resume
        checkpoint.check_model(self._digest())
        saved = checkpoint.state["run"]
        if saved["total_steps"] != p.total_steps or saved["input_size"] != list(p.fit_pixels.shape[1:]):
            raise ParameterError(f"the checkpoint {checkpoint.path.name} does not fit this run: {saved['total_steps']} "
                                 f"steps of {saved['input_size']} images saved, {p.total_steps} of "
                                 f"{list(p.fit_pixels.shape[1:])} now (other images?)")
        p.algorithm.load_state_dict(checkpoint.state["algorithm"])
        p.generator.set_state(saved["generator"])
        keeper.load_state_dict(saved["keeper"], p.device)
        history.extend(checkpoint.state["history"])
        self._started -= saved["elapsed"]
        batches = list(saved["batches"].to(p.device).split(saved["batch_sizes"]))
        return saved["step"], saved["spent"], LoopPosition(saved["epoch"], batches, saved["done"])

    def _replay(self, history: list[dict[str, Any]], start: RunEvent) -> Iterator[RunEvent]:
        """The saved events as they were yielded (the "start" one with this process's run description and
        ``resumed_from_step``)."""
        for record in history:
            data = {k: v for k, v in record.items() if k not in ("kind", "step", "epoch", "elapsed")}
            if record["kind"] == "start":
                data = {**data, **start.data, "resumed_from_step": self._resume.step}
            yield RunEvent(record["kind"], record["step"], record["epoch"], record["elapsed"], data)

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

    def _reason_to_end(self, step: int) -> str | None:
        """"stopped" (stop()), "time limit" (max_seconds) or None (go on) before step ``step`` + 1; under torchrun
        every rank agrees. The time limit (counted from the start, preparation included) never ends a run before its
        first step: a run whose preparation alone outlasts it (a loaded class server) makes one step, not none."""
        stop = self._stop.is_set()
        late = self.config.max_seconds is not None and step > 0 and self._elapsed() > self.config.max_seconds
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


def _random_noise_evaluation(p: Prepared) -> Evaluation:
    """The random ±eps noise baseline on the held-out images (memoised: the same model, images and noise)."""
    return p.remember("random-noise evaluation", p.model, [p.holdout_pixels, p.random_delta, p.holdout_set.labels],
                      lambda: p.evaluate_holdout(p.random_delta))
