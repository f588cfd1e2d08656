"""Images needed: the held-out fooling ratio of a UAP against the number of images it was fitted on.

The papers
    UAP paper (Moosavi-Dezfooli et al., CVPR 2017, Fig. "fooling ratio vs number of images in X"): a few
    thousand ImageNet images suffice for a UAP that fools most of the 50,000 validation images; with 500 images
    the UAP method reaches only about 30 % on GoogLeNet, and the fooling ratio rises with the set. The SGA paper
    (Liu et al., ICCV 2023) studies a limited-sample setting (500 images) where its gradient aggregation
    generalises better than SGD-UAP. The claim tested here: **the held-out fooling ratio grows with the fit set**.

What this study does
    One held-out set, drawn once (a fixed seeded permutation) and disjoint from every fit set; for each seed a
    shuffled order of the remaining images whose first n images are the fit set of size n (the sets of one seed
    are nested). Every (method, size, seed) is one :class:`~uap_core.run.Run` with the method's paper defaults
    (budget: see below), keeping the last δ, measured on the held-out images (fooling ratio = share of top-1
    labels changed, no labels needed) against random ±eps noise on the same images. Reported per size: mean,
    sample std, min and max over the seeds.

Where it differs
    - The papers use ImageNet (10,000 fit images, 50,000 validation images); the default is CIFAR-10
      ResNet-20 on the CIFAR-10 test images (``cifar10-test``; 1,000 held out, fit sets of 10…1,000), eps 8/255
      (CIFAR's usual budget; the papers' 10/255 on ImageNet).
    - Budget: the papers run to convergence (UAP: until 80 % of the fit set is fooled; SGA / SGD-UAP: 20 epochs).
      A fixed number of epochs alone would give a set of 10 images (one batch) 20 updates and a set of 1,000
      images (four batches of 250) 80, mixing "more data" with "more updates". So each run takes the method's
      epochs (``epochs``, default the method's own: 20 for SGA and SGD-UAP), raised until it makes at least
      ``min_steps`` updates of δ (default 80, what 20 epochs make on 1,000 images): every size gets the same
      number of sign steps and the largest keeps the paper's schedule. ``min_steps 0`` gives the plain epochs;
      ``max_image_gradients`` caps the cost. Methods with their own notion of a pass (UAP's DeepFool passes and
      stopping rule, SV-UAP, the data-free methods) keep their epochs.
    - A data-free method (gd_uap, fff, trm_uap) never reads the fit set: its curve is flat by construction.
    - The held-out set is one fixed draw for every seed; the spread shown is over the fit sets and batch orders.

Measured (CIFAR-10 ResNet-20, 2 shared CPU cores, eps 8/255, 500 held-out images, 2 seeds, every run 20 or 50
updates: ``python -m uap_core study images_needed --methods sga --fit-sizes 10,100 --seeds 0,1 --holdout 500
--epochs 1 --min-steps 20 --device cpu``, and the same with ``--methods sgd_uap --fit-sizes 10,200
--min-steps 50``):

    method    fit images   held-out fooling ratio (mean, per seed)   random ±eps noise
    SGA       10           0.26 (0.30, 0.22)                         0.33
    SGA       100          0.72 (0.716, 0.718)
    SGD-UAP   10           0.28 (0.29, 0.27)
    SGD-UAP   200          0.49 (0.56, 0.42)

    The claim holds: a UAP fitted on 10 images fools no more held-out images than random noise (it fits those
    10), one fitted on 100–200 fools far more. With a fixed 10 epochs instead (no min_steps) the picture is
    muddier: SGD-UAP reached 0.17 / 0.27 / 0.59 at 10 / 100 / 300 images (10, 10 and 20 updates; another
    held-out draw), i.e. part of the growth was the number of updates.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from ..algorithms import ALGORITHMS
from ..errors import ParameterError
from ..models import get_spec, member_names, resolve_device
from ..params import param
from ..run_types import NORMS
from .base import CIFAR_TEST_IMAGES, Study, StudyResult, fixed_split
from . import figures

HOLDOUT_SEED = 12345  # the held-out draw: one fixed permutation, the same for every seed, size and method


@dataclass
class Settings:
    model: str = param("cifar_resnet20", "Model to attack (a registry name; 'a,b' fits an ensemble).")
    images: str = param(CIFAR_TEST_IMAGES, "Image source: a folder, a .npz file, 'samples' or 'cifar10-test' (the "
                                             "CIFAR-10 test set, downloaded once: 170 MB). Needs at least "
                                             "holdout + the largest fit size images.")
    eps: float = param(8 / 255, "Budget in pixel units; n/255 accepted (the papers: 10/255 on ImageNet, "
                                "8/255 is CIFAR-10's usual).", 1e-6, 1000.0)
    norm: str = param("linf", "Norm of the budget.", choices=NORMS)
    methods: list[str] = param(["sga", "sgd_uap"], "Methods to compare (any of the registry), each with its "
                                                   "paper defaults.", choices=tuple(ALGORITHMS))
    fit_sizes: list[int] = param([10, 30, 100, 300, 1000], "Numbers of fit images (drawn from the images "
                                                            "not held out; nested within a seed).", 1, 10_000_000)
    seeds: list[int] = param([0, 1, 2], "Seeds: each draws its own fit sets and batch order.", 0, 2**31 - 1)
    holdout: int = param(1000, "Held-out images the fooling ratio is measured on (fixed, disjoint from every "
                               "fit set).", 1, 10_000_000)
    epochs: int = param(0, "Passes over the fit set per run (0: each method's default, 20 for SGA and SGD-UAP "
                           "as the SGA paper's E).", 0, 100_000)
    min_steps: int = param(80, "Fewest updates of δ per run: a small fit set gets more passes so that δ "
                               "converges, as the papers run to convergence (80 = what 20 epochs of B = 250 make "
                               "on 1,000 images; 0 = the epochs alone). For batch methods only.", 0, 10_000_000)
    max_image_gradients: int = param(0, "Cap on a run's cost in image-gradients (0 = none: the epochs decide).",
                                     0, 10**9)
    device: str = param("auto", "cpu, cuda or auto (the GPU when there is one).")


def split_plan(count: int, holdout: int, seeds: list[int]) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """The images of one study: held-out indices (holdout,) — the first ``holdout`` of a permutation seeded with
    HOLDOUT_SEED, the same for every seed — and per seed an order of all the other indices (count - holdout,), whose
    first n are the fit set of size n (so a seed's fit sets are nested and none meets the held-out set)."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(HOLDOUT_SEED))
    held_out, pool = order[:holdout], order[holdout:]
    return held_out, {seed: pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))]
                      for seed in seeds}


def planned_epochs(method: str, fit_images: int, epochs: int = 0, min_steps: int = 0) -> int:
    """Passes over ``fit_images`` images for ``method``: ``epochs`` (0: the method's default), raised so that the
    run makes at least ``min_steps`` updates of δ — for methods whose epoch is one pass over the fit set in
    batches of their ``batch_size`` (SGA, SGD-UAP, DF-UAP, Cos-UAP, GAP). Methods with their own notion of a pass
    (UAP's DeepFool passes with its stopping rule, SV-UAP's power iterations, the data-free methods) keep
    ``epochs``."""
    from ..algorithms import UAPAlgorithm
    from ..params import parse_params

    cls = ALGORITHMS[method]
    params = parse_params(cls.Params, {})
    chosen = epochs or cls.default_epochs
    if (not min_steps or cls.is_data_free(params) or not hasattr(params, "batch_size")
            or cls.batch_size is not UAPAlgorithm.batch_size or cls.steps_per_epoch is not UAPAlgorithm.steps_per_epoch):
        return chosen
    per_epoch = math.ceil(fit_images / max(1, min(int(params.batch_size), fit_images)))
    return max(chosen, math.ceil(min_steps / per_epoch))


class ImagesNeeded(Study):
    name = "images_needed"
    title = "Images needed: held-out fooling ratio vs number of fit images"
    summary = "How many images a UAP needs: the held-out fooling ratio against the size of the fit set, per method."
    paper = ("Moosavi-Dezfooli et al., CVPR 2017 (fooling ratio vs number of images); Liu et al., ICCV 2023 "
             "(limited-sample setting)")
    Settings = Settings
    table_names = ("runs", "by_size")

    def __init__(self, settings: Any = None, device: str = "auto") -> None:
        super().__init__(settings, device)
        s = self.settings
        get_spec(s.model)
        resolve_device(s.device)
        if len(set(s.methods)) != len(s.methods) or len(set(s.seeds)) != len(s.seeds):
            raise ParameterError("methods and seeds must not repeat a value")

    def images_required(self) -> int:
        return self.settings.holdout + max(self.settings.fit_sizes)

    def models_used(self) -> list[str]:
        return member_names(self.settings.model)

    # ------------------------------------------------------------------------------------------ the work
    def _run(self) -> Iterator[tuple[float, str]]:
        from ..run import Run, RunConfig

        s = self.settings
        sizes = sorted(set(s.fit_sizes))
        yield 0.0, f"loading {s.model} and the images"
        model, images = self.load_model_and_images(s.model)
        self.check_split(images, holdout=s.holdout, fit_sizes=sizes[-1])  # the largest fit size
        holdout_idx, fit_orders = split_plan(len(images), s.holdout, s.seeds)
        holdout_set = images.subset(holdout_idx)

        plan = [(seed, n, method) for seed in s.seeds for n in sizes for method in s.methods]
        weights = [n + 10 for _seed, n, _method in plan]  # a run's cost grows with its fit set
        total, done = float(sum(weights)), 0.0
        for (seed, n, method), weight in zip(plan, weights):
            if self.stopping:
                return
            fit_order = fit_orders[seed]
            config = RunConfig(model=s.model, algorithm=method, eps=s.eps, norm=s.norm, images=images.source,
                               fit=n, holdout=s.holdout, seed=seed, device=self.device,
                               epochs=planned_epochs(method, n, s.epochs, s.min_steps),
                               max_image_gradients=s.max_image_gradients or None, keep="last",
                               eval_every=100_000_000)
            run = Run(config, model=model, images=fixed_split(images.subset(fit_order[:n]), holdout_set))
            label = f"{method} · {n} images · seed {seed}"
            started = time.perf_counter()
            yield from self.fit(run, done / total, (done + weight) / total, label)
            result = run.result
            if result is None or result.reason == "stopped":
                return
            summary = result.summary()
            self.tables["runs"].append({
                "method": method, "fit_images": n, "seed": seed, "fooling_ratio": summary["fooling_ratio"],
                "fooling_rate": summary["fooling_rate"],  # 1 − accuracy under δ; None without true labels
                "random_fooling_ratio": summary["random_fooling_ratio"], "dominant_share": summary["dominant_share"],
                "heldout_images": summary["heldout_images"], "steps": result.steps, "epochs": result.info["epochs"],
                "image_gradients": summary["image_gradients"], "reason": result.reason,
                "seconds": round(time.perf_counter() - started, 3)})
            done += weight
            yield done / total, f"{label}: held-out fooling ratio {summary['fooling_ratio']:.3f}"

    def finish(self) -> None:
        runs = self.tables["runs"]
        by_size = figures.aggregate(runs, ("method", "fit_images"), "fooling_ratio")
        self.tables["by_size"] = [{"method": r["method"], "fit_images": r["fit_images"],
                                   "fooling_ratio_mean": r["mean"], "fooling_ratio_std": r["std"],
                                   "fooling_ratio_min": r["min"], "fooling_ratio_max": r["max"], "seeds": r["n"]}
                                  for r in by_size]
        summary: dict[str, Any] = {}
        randoms = [r["random_fooling_ratio"] for r in runs]
        summary["random_fooling_ratio"] = sum(randoms) / len(randoms) if randoms else None
        for method in dict.fromkeys(r["method"] for r in self.tables["by_size"]):
            points = sorted((r for r in self.tables["by_size"] if r["method"] == method),
                            key=lambda r: r["fit_images"])
            smallest, largest = points[0], points[-1]
            summary[method] = {
                "smallest_fit": smallest["fit_images"], "fooling_ratio_smallest": smallest["fooling_ratio_mean"],
                "largest_fit": largest["fit_images"], "fooling_ratio_largest": largest["fooling_ratio_mean"],
                "gain": (largest["fooling_ratio_mean"] - smallest["fooling_ratio_mean"]
                         if largest["fooling_ratio_mean"] is not None and smallest["fooling_ratio_mean"] is not None
                         else None)}
        self.summary_values = summary

    # ------------------------------------------------------------------------------------------ the figure
    @staticmethod
    def figure(result: StudyResult):
        """Mean held-out fooling ratio per method against the fit-set size (log x): a band from the minimum to
        the maximum over the seeds, error bars of ± one standard deviation; random noise dashed."""
        import plotly.graph_objects as go

        s = result.settings
        title = "Held-out fooling ratio vs number of fit images"
        runs = result.tables.get("runs", [])
        seeds = s.get("seeds", [])
        subtitle = (f"{s.get('model')}, eps {figures.eps_text(s.get('eps'), s.get('norm'))}, {s.get('holdout')} held-out "
                    f"images, {s.get('epochs') or 'default'} epochs (at least {s.get('min_steps')} steps) per run; mean over {len(seeds)} seed(s), band min–max, "
                    f"bars ± std")
        if not runs:
            return figures.empty_figure(title, "no run finished yet")
        fig = go.Figure()
        stats = figures.aggregate(runs, ("method", "fit_images"), "fooling_ratio")
        for i, method in enumerate(dict.fromkeys(r["method"] for r in runs)):
            points = sorted((r for r in stats if r["method"] == method), key=lambda r: r["fit_images"])
            x = [p["fit_images"] for p in points]
            mean = [p["mean"] for p in points]
            figures.add_band_line(
                fig, x, mean, [p["min"] for p in points], [p["max"] for p in points], name=method,
                line_color=figures.color(i),
                hover=f"{method}<br>%{{x}} fit images<br>mean fooling ratio %{{y:.3f}}<extra></extra>")
            fig.data[-1].error_y = {"type": "data", "array": [p["std"] or 0 for p in points], "thickness": 1,
                                    "width": 4}
        randoms = [r["random_fooling_ratio"] for r in runs if figures.finite(r.get("random_fooling_ratio"))]
        if randoms:
            figures.add_reference_line(fig, sum(randoms) / len(randoms), "random ±eps noise")
        figures.layout(fig, title + (" (stopped)" if result.stopped else ""), subtitle)
        sizes = sorted({r["fit_images"] for r in runs})  # ticks at the sizes measured, not log minor digits
        fig.update_xaxes(type="log", title="fit images (log scale)", tickvals=sizes, ticktext=[str(n) for n in sizes])
        fig.update_yaxes(title="held-out fooling ratio", range=[0, 1.02])
        return fig

