"""Several seeds of one run: one :class:`~uap_core.run.Run` per seed, and their spread.

Users of every UAP code base ask why their number differs from the paper's; the spread over seeds (which images
are fitted and held out, the batch order, the random draws) answers it. :class:`SeededRuns` runs the same
:class:`~uap_core.run_types.RunConfig` once per seed; :func:`band` turns the runs' histories into one mean line
with its min–max and ±1 s.d. band per step, :func:`spread` the final figures into mean ± s.d. No drawing here:
the UI draws the bands this module computes.

    runs = SeededRuns(RunConfig(model="cifar_resnet20", algorithm="sga", images="cifar10-test"), seeds=[0, 1, 2])
    outcome = runs.run_to_end()
    outcome.summary()["fooling_ratio"]          # {"mean": …, "sd": …, "min": …, "max": …, "n": 3}
    band(outcome.histories, "grad_cosine")      # [{"x": 1, "mean": …, "min": …, "max": …, "sd": …, "n": 3}, …]
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from .images import ImageSet
from .models import Classifier
from .params import param, parse_params
from .run import Run
from .run_types import RunConfig, RunEvent, RunResult

X_KEYS = {"step": "step", "image_gradients": "image_gradients_total"}  # an event's position on each x axis


@dataclass
class SeedSettings:
    """seeds: run once per seed (None: the run's own ``seed`` alone)."""

    seeds: list[int] | None = param(None, "several seeds, comma-separated (e.g. 0,1,2): one run each; the spread "
                                          "(mean ± s.d. of the held-out fooling ratio) is reported", 0, 2**31 - 1,
                                    label="Seeds (comma-separated; empty = the seed above)",
                                    hint="One run per seed: the charts draw each method's mean line with its "
                                         "min–max band, the result gives mean ± s.d.")


def parse_seeds(text: str | Sequence[int] | None) -> list[int] | None:
    """"0,1,2" (or a list) → [0, 1, 2], checked as :class:`SeedSettings` declares it; None or "" → None."""
    return parse_params(SeedSettings, {"seeds": text}).seeds


def spread(values: Sequence[float]) -> dict[str, float]:
    """mean, sd (the sample standard deviation, n − 1 in the denominator; 0 for one value), min, max and n of the
    finite values (NaN ones are left out; all NaN → NaN figures, n 0)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return {"mean": float("nan"), "sd": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"mean": statistics.fmean(finite), "sd": statistics.stdev(finite) if len(finite) > 1 else 0.0,
            "min": min(finite), "max": max(finite), "n": len(finite)}


def band(histories: Sequence[Sequence[dict[str, Any]]], key: str, kind: str = "step",
         x_axis: str = "step") -> list[dict[str, float]]:
    """One point per x that every history has a finite ``key`` at (events of ``kind``; x the step or the
    image-gradients spent, ``x_axis``), in x order: {"x", "mean", "sd", "min", "max", "n"} over the histories
    (:func:`spread`). Seeds of one configuration step and evaluate at the same steps, so each x holds one value
    per seed; an x missing from a run still going is left out until it arrives."""
    x_key = X_KEYS[x_axis]
    per_run = []
    for history in histories:
        points: dict[float, float] = {}
        for event in history:
            value = event.get(key)
            if event.get("kind") == kind and value is not None and math.isfinite(float(value)):
                points[event.get(x_key, event["step"])] = float(value)
        per_run.append(points)
    if not per_run:
        return []
    shared = set(per_run[0]).intersection(*per_run[1:])
    return [{"x": x, **spread([points[x] for points in per_run])} for x in sorted(shared)]


@dataclass
class SeededResult:
    """The runs of one configuration, one per seed (in the order of the seeds)."""

    results: list[RunResult]

    @property
    def seeds(self) -> list[int]:
        return [r.config.seed for r in self.results]

    @property
    def histories(self) -> list[list[dict[str, Any]]]:
        return [r.history for r in self.results]

    def summary(self) -> dict[str, Any]:
        """:func:`spread_summary` of the runs' summaries."""
        return spread_summary([r.summary() for r in self.results])


def spread_summary(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The CLI's --json spread of runs that differ only in their seed (their ``RunResult.summary()`` dicts): the
    seeds, the :func:`spread` of the held-out fooling ratio, of the random noise's and of the steps, and the runs."""
    return {"seeds": [s["seed"] for s in summaries],
            **{key: spread([s[key] for s in summaries]) for key in SPREAD_KEYS},
            "runs": list(summaries)}


SPREAD_KEYS = ("fooling_ratio", "random_fooling_ratio", "steps")


class SeededRuns:
    """One Run per seed, one after another (the model and images, when given, are shared)."""

    def __init__(self, config: RunConfig, seeds: Sequence[int], model: Classifier | None = None,
                 images: ImageSet | None = None) -> None:
        if not seeds:
            raise ValueError("SeededRuns needs at least one seed")
        self.runs = [Run(dataclasses.replace(config, seed=int(seed)), model=model, images=images) for seed in seeds]
        self.result: SeededResult | None = None

    def stop(self) -> None:
        for run in self.runs:
            run.stop()

    def events(self) -> Iterator[tuple[int, RunEvent]]:
        """(seed, event) of each run in turn; :attr:`result` is set before the last run's "done" event."""
        for i, run in enumerate(self.runs):
            for event in run.events():
                if event.kind == "done" and i == len(self.runs) - 1:
                    self.result = SeededResult([r.result for r in self.runs])
                yield run.config.seed, event
            if run.stop_requested:
                break
        if self.result is None:
            self.result = SeededResult([r.result for r in self.runs if r.result is not None])

    def run_to_end(self, on_event: Callable[[int, RunEvent], None] | None = None) -> SeededResult:
        for seed, event in self.events():
            if on_event:
                on_event(seed, event)
        assert self.result is not None
        return self.result
