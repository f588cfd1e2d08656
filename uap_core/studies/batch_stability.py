"""Batch size and stability: SGD-UAP at several batch sizes against SGA, at the same image-gradient budget.

The paper
    SGA paper (Liu et al., ICCV 2023), Fig. 3 — its motivation: against the batch size of SGD-UAP,
    (a) the cosine similarity of the gradients of adjacent iterations, (b) the number of sign operations used and
    (c) the average fooling ratio. Small batches explore better but give noisy, unstable gradient directions
    (low adjacent cosine) and many sign operations (each throws away magnitude: quantisation error that
    accumulates); large batches are stable but explore less and generalise worse. SGA keeps small-batch
    exploration (inner steps of m images) with large-batch stability: the gradients of all inner steps are
    aggregated before the one sign step of an outer iteration. The claim tested here: **at a small batch
    (B = m = 10) SGA's aggregated gradients have a higher mean adjacent-step cosine than SGD-UAP's mini-batch
    gradients**, with fewer sign operations for the same cost.

What this study does
    Every configuration — SGD-UAP at each batch size B, SGA with outer batch ``sga_batch`` and inner mini-batch m
    for each m of ``sga_minibatches`` (K = ``inner_passes``) — fits δ on the same fit images (a fixed split,
    the same held-out images for all) with the same seed, until it has spent the same budget of image-gradients
    (``RunConfig.max_image_gradients``; forward + input-gradient backward over one image). It reuses the
    statistics every step already reports (:meth:`UAPAlgorithm.update_statistics`): ``grad_cosine`` =
    cos(g_t, g_{t-1}) of the gradient turned into the update (SGD-UAP: the mini-batch gradient; SGA: the aggregated
    gradient of outer step t) and ``sign_ops`` = sign steps applied to δ so far (docs/algorithms.md: SGD-UAP one per
    mini-batch, SGA one per outer step — its inner steps move a throw-away copy; the table also lists SGA's inner
    sign steps as ``inner_sign_steps``), and the held-out fooling ratio at about 20 evaluations per run.

Where it differs
    - The paper plots (a)–(c) against the batch size at the end of training on ImageNet (10,000 images, 20
      epochs); here the three are curves against image-gradients spent (the x axis shared by all runs), the
      per-run means and finals in the ``runs`` table give the paper's per-batch-size points. Default data:
      CIFAR-10 ResNet-20, 1,000 fit / 1,000 held-out CIFAR-10 test images, eps 8/255.
    - Equal image-gradient budgets (the paper runs 20 epochs for every method, so SGA there costs K = 4 times
      SGD-UAP's image-gradients). The default budget, 80,000, is SGA's 20 epochs on 1,000 images.

Measured (CIFAR-10 ResNet-20, 2 shared CPU cores, seed 0, 500 fit / 500 held-out images, eps 8/255,
4,000 image-gradients per run; ``python -m uap_core study batch_stability --batch-sizes 10,100 --sga-batch 100
--sga-minibatches 10 --budget 4000 --fit 500 --holdout 500 --device cpu``):

    run              mean cos(g_t, g_t-1)   sign ops   held-out fooling ratio (random noise 0.344)
    SGD-UAP B=10     0.04                   400        0.736
    SGD-UAP B=100    0.25                    40        0.738
    SGA B=100 m=10   0.36                    10        0.590   (its raw inner gradients: cosine 0.04)

    The claim holds: the aggregate of SGA's ten-image inner gradients is far steadier (0.36) than SGD-UAP's
    ten-image gradients (0.04), although the inner gradients themselves jump as much (0.04), and larger SGD-UAP
    batches are steadier too (0.25 at B = 100). Panel (b) is the paper's: SGA takes 40 times fewer sign steps.
    What does not carry over at this budget is panel (c): at equal image-gradients SGA's few aggregated steps
    (10) have not yet taken δ as far as SGD-UAP's (0.59 against 0.74), the same trade the classroom race shows;
    the paper's SGA runs 20 epochs, i.e. 4 times SGD-UAP's image-gradients.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from ..errors import ParameterError
from ..models import get_spec, member_names, resolve_device
from ..params import param
from ..run_types import NORMS
from . import figures
from .base import CIFAR_TEST_IMAGES, Study, StudyResult, fixed_split

SPLIT_SEED = 12345  # the fit / held-out split: the same for every configuration and seed
MAX_STEP_ROWS = 1000  # per run in the "steps" table (every k-th step beyond that; the run's means use them all)


@dataclass
class Settings:
    model: str = param("cifar_resnet20", "Model to attack (a registry name; 'a,b' fits an ensemble).")
    images: str = param(CIFAR_TEST_IMAGES, "Image source: a folder, a .npz file, 'samples' or 'cifar10-test' "
                                             "(the CIFAR-10 test set, downloaded once: 170 MB).")
    eps: float = param(8 / 255, "Budget in pixel units; n/255 accepted.", 1e-6, 1000.0)
    norm: str = param("linf", "Norm of the budget (sign operations exist under L∞ only).", choices=NORMS)
    fit: int = param(1000, "Fit images (the same for every configuration).", 1, 10_000_000)
    holdout: int = param(1000, "Held-out images the fooling ratio is measured on.", 1, 10_000_000)
    batch_sizes: list[int] = param([10, 50, 250], "SGD-UAP batch sizes B (one run each).", 1, 100_000)
    sga_batch: int = param(250, "SGA's outer batch B (paper: 250).", 1, 100_000)
    sga_minibatches: list[int] = param([10], "SGA's inner mini-batch sizes m (one run each; paper: 10). Empty "
                                             "is not allowed; compare SGD-UAP at B = m.", 1, 100_000)
    inner_passes: int = param(4, "SGA's K: the inner steps cover the outer batch K times (paper: 4).", 1, 100)
    budget: int = param(80_000, "Image-gradients per run (forward + backward over one image); 80,000 = SGA's 20 "
                                "epochs on 1,000 images.", 1, 10**10)
    seeds: list[int] = param([0], "Seeds (batch order and SGA's inner draws; the split stays fixed).", 0,
                             2**31 - 1)
    device: str = param("auto", "cpu, cuda or auto (the GPU when there is one).")


def _label(method: str, batch: int, minibatch: int | None) -> str:
    return f"SGD-UAP B={batch}" if method == "sgd_uap" else f"SGA B={batch} m={minibatch}"


class BatchStability(Study):
    name = "batch_stability"
    title = "Batch size and stability: gradient cosine, sign operations and fooling ratio"
    summary = ("SGD-UAP at several batch sizes against SGA at equal cost: how stable the update direction is, how "
               "many sign steps δ takes, how well it fools held-out images.")
    paper = "Liu et al., ICCV 2023 (SGA), Fig. 3"
    Settings = Settings
    table_names = ("runs", "steps", "evals")

    def __init__(self, settings: Any = None, device: str = "auto") -> None:
        super().__init__(settings, device)
        s = self.settings
        get_spec(s.model)
        resolve_device(s.device)
        if len(set(s.seeds)) != len(s.seeds):
            raise ParameterError("seeds must not repeat a value")

    def models_used(self) -> list[str]:
        return member_names(self.settings.model)

    def configurations(self) -> list[tuple[str, int, int | None]]:
        """(method, batch size, inner mini-batch or None) per run, in order: SGD-UAP's batches, then SGA's."""
        s = self.settings
        runs: list[tuple[str, int, int | None]] = [("sgd_uap", b, None) for b in dict.fromkeys(s.batch_sizes)]
        runs += [("sga", s.sga_batch, m) for m in dict.fromkeys(s.sga_minibatches)]
        return runs

    # ------------------------------------------------------------------------------------------ the work
    def _run(self) -> Iterator[tuple[float, str]]:
        from ..run import Run, RunConfig

        s = self.settings
        yield 0.0, f"loading {s.model} and the images"
        model, images = self.load_model_and_images(s.model)
        self.check_split(images, fit=s.fit, holdout=s.holdout)
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(SPLIT_SEED))
        split = fixed_split(images.subset(order[s.holdout:s.holdout + s.fit]), images.subset(order[:s.holdout]))

        plan = [(seed, *configuration) for seed in s.seeds for configuration in self.configurations()]
        for index, (seed, method, batch, minibatch) in enumerate(plan):
            if self.stopping:
                return
            label = _label(method, batch, minibatch)
            params: dict[str, Any] = {"batch_size": batch}
            if method == "sga":
                params.update(minibatch_size=minibatch, inner_passes=s.inner_passes)
            config = RunConfig(model=s.model, algorithm=method, eps=s.eps, norm=s.norm, images=images.source,
                               fit=s.fit, holdout=s.holdout, seed=seed, device=self.device, params=params,
                               max_image_gradients=s.budget, keep="last")
            run = Run(config, model=model, images=split)
            steps: list[dict[str, Any]] = []
            started, start_data = time.perf_counter(), {}
            cosines, inner_cosines, errors = [], [], []

            def record(event: Any) -> None:
                data = event.data
                if event.kind == "start":
                    start_data.update(data)
                elif event.kind == "step":
                    for values, key in ((cosines, "grad_cosine"), (inner_cosines, "inner_adjacent_cosine"),
                                        (errors, "quantisation_error")):
                        if figures.finite(data.get(key)) is not None:
                            values.append(float(data[key]))
                    stride = max(1, math.ceil(start_data["total_steps"] / MAX_STEP_ROWS))
                    if event.step % stride == 0 or event.step == 1:
                        self.tables["steps"].append({
                            "run": label, "method": method, "seed": seed, "step": event.step,
                            "image_gradients": data["image_gradients_total"],
                            "grad_cosine": figures.finite(data.get("grad_cosine")),
                            "sign_ops": data.get("sign_ops"),
                            "quantisation_error": figures.finite(data.get("quantisation_error")),
                            "inner_adjacent_cosine": figures.finite(data.get("inner_adjacent_cosine")),
                            "loss": figures.finite(data.get("loss"))})
                    steps.append(data)
                elif event.kind == "eval":
                    self.tables["evals"].append({"run": label, "method": method, "seed": seed, "step": event.step,
                                                 "image_gradients": data["image_gradients_total"],
                                                 "fooling_ratio": data["fooling_ratio"]})

            yield from self.fit(run, index / len(plan), (index + 1) / len(plan), f"{label} · seed {seed}",
                                on_event=record)
            result = run.result
            if result is None or result.reason == "stopped":
                return
            last = steps[-1] if steps else {}
            # SGA's inner steps: m images each, so image-gradients / m of them (each a sign step on the copy)
            inner_sign_steps = result.info["image_gradients"] // min(minibatch, batch, s.fit) if method == "sga" else 0
            self.tables["runs"].append({
                "run": label, "method": method, "batch_size": batch, "minibatch_size": minibatch, "seed": seed,
                "steps": result.steps, "image_gradients": result.info["image_gradients"],
                "mean_grad_cosine": statistics.fmean(cosines) if cosines else None,
                "sign_ops": last.get("sign_ops", 0), "inner_sign_steps": inner_sign_steps,
                "mean_quantisation_error": statistics.fmean(errors) if errors else None,
                "mean_inner_adjacent_cosine": statistics.fmean(inner_cosines) if inner_cosines else None,
                "fooling_ratio": result.evaluation.fooling_ratio,
                "fooling_rate": result.evaluation.fooling_rate,  # 1 − accuracy under δ; None without true labels
                "random_fooling_ratio": start_data["random_fooling_ratio"],
                "seconds": round(time.perf_counter() - started, 3)})
            yield (index + 1) / len(plan), (f"{label} · seed {seed}: held-out fooling ratio "
                                            f"{result.evaluation.fooling_ratio:.3f}")

    def finish(self) -> None:
        summary: dict[str, Any] = {}
        for entry in figures.aggregate(self.tables["runs"], ("run",), "mean_grad_cosine"):
            rows = [r for r in self.tables["runs"] if r["run"] == entry["run"]]
            summary[entry["run"]] = {
                "mean_grad_cosine": entry["mean"],
                "sign_ops": statistics.fmean(r["sign_ops"] for r in rows),
                "fooling_ratio": statistics.fmean(r["fooling_ratio"] for r in rows)}
        randoms = [r["random_fooling_ratio"] for r in self.tables["runs"]]
        summary["random_fooling_ratio"] = statistics.fmean(randoms) if randoms else None
        self.summary_values = summary

    # ------------------------------------------------------------------------------------------ the figure
    @staticmethod
    def figure(result: StudyResult):
        """Three panels over image-gradients spent (shared x): adjacent-step gradient cosine, cumulative sign
        operations on δ, held-out fooling ratio (random noise dashed). One colour per configuration."""
        from plotly.subplots import make_subplots

        s = result.settings
        title = "Batch size and stability at equal cost"
        steps, evals = result.tables.get("steps", []), result.tables.get("evals", [])
        if not steps and not evals:
            return figures.empty_figure(title, "no step yet")
        fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.07, subplot_titles=(
            "(a) gradient cosine of adjacent updates cos(gₜ, gₜ₋₁)", "(b) sign operations applied to δ",
            "(c) held-out fooling ratio"))
        labels = list(dict.fromkeys([r["run"] for r in steps] + [r["run"] for r in evals]))
        seeds = list(dict.fromkeys(r["seed"] for r in steps + evals))
        for i, label in enumerate(labels):
            colour = figures.color(i)
            for k, seed in enumerate(seeds):
                name = label if len(seeds) == 1 else f"{label} · seed {seed}"
                mine = [r for r in steps if r["run"] == label and r["seed"] == seed]
                points = [r for r in evals if r["run"] == label and r["seed"] == seed]
                x = [r["image_gradients"] for r in mine]
                common = {"legendgroup": label, "line": {"color": colour, "width": 1.5}}
                fig.add_scatter(x=x, y=[r["grad_cosine"] for r in mine], mode="lines", name=label,
                                showlegend=k == 0, opacity=0.85, row=1, col=1, **common,
                                hovertemplate=f"{name}<br>%{{x:,}} image-gradients<br>cos %{{y:.3f}}<extra></extra>")
                fig.add_scatter(x=x, y=[r["sign_ops"] for r in mine], mode="lines", name=label, showlegend=False,
                                row=2, col=1, **common,
                                hovertemplate=f"{name}<br>%{{x:,}} image-gradients<br>%{{y}} sign steps<extra></extra>")
                fig.add_scatter(x=[r["image_gradients"] for r in points], y=[r["fooling_ratio"] for r in points],
                                mode="lines+markers", name=label, showlegend=False, row=3, col=1,
                                marker={"color": colour, "size": 5}, **common,
                                hovertemplate=f"{name}<br>%{{x:,}} image-gradients<br>fooling ratio %{{y:.3f}}"
                                              f"<extra></extra>")
        randoms = [r["random_fooling_ratio"] for r in result.tables.get("runs", [])
                   if figures.finite(r.get("random_fooling_ratio")) is not None]
        if randoms:
            figures.add_reference_line(fig, statistics.fmean(randoms), "random ±eps noise", row=3, col=1)
        figures.layout(fig, title + (" (stopped)" if result.stopped else ""),
                       f"{s.get('model')}, eps {figures.eps_text(s.get('eps'), s.get('norm'))}, {s.get('fit')} fit / "
                       f"{s.get('holdout')} held-out images, {s.get('budget'):,} image-gradients per run",
                       height=820)
        fig.update_yaxes(title="cosine", row=1, col=1)
        fig.update_yaxes(title="sign steps (log)", type="log", row=2, col=1)
        fig.update_yaxes(title="fooling ratio", range=[0, 1.02], row=3, col=1)
        fig.update_xaxes(title="image-gradients spent", row=3, col=1)
        fig.update_layout(legend={"y": -0.08})
        return fig
