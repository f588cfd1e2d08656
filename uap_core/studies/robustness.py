"""Robustness: the held-out fooling ratio of a plain δ and of robust δ (fitted by expectation over transformation)
against the strength of real transformations — JPEG quality, rotation, scale, blur, brightness.

The paper
    Xu & Singh, Towards robust universal adversarial perturbations, ICML 2024: a UAP fitted on the exact pixels
    loses most of its effect once the perturbed image is rotated, rescaled or re-compressed; fitting it through
    random transformations (expectation over transformation, Athalye et al. ICML 2018) keeps it. The claim tested
    here: **under each transformation, the robust δ keeps a higher held-out fooling ratio than the plain one**,
    the gap growing with the strength, at some cost on the exact pixels.

What this study does
    :class:`~uap_core.run.Run` of the same method on the same fit images with the same seed: one plain, and one
    with ``RunConfig.robust`` per kind listed in ``robust`` (the differentiable transformations of
    :mod:`uap_core.transforms`, at the run's default strengths: JPEG quality 50…95, ±10°, scale 1 ± 0.1, shift ±5 %,
    brightness and contrast 1 ± 0.25, blur σ ≤ 1 px; "screen" is all of them at once). Each keeps its last δ. Each δ is then
    measured on the same held-out images under the *real* transformations (:mod:`uap_core.robustness`: libjpeg,
    torchvision) at every strength listed: the fooling ratio compares the transformed perturbed image's label with
    the transformed clean image's (what δ adds under the transformation; the untransformed reference and the
    transformation's own flips are in the table too, see that module).

Where it differs
    - CIFAR-10 ResNet-20 on the CIFAR-10 test images at eps 8/255 by default (the paper: ImageNet models).
    - Robustness by EOT over our own transformation set, one random view per image and step, not the paper's
      iterative projection algorithm (RobustUAP).
    - Rotation is measured counter-clockwise only (a robust δ is fitted on ± angles); scale about the centre.
    - Both δ take sign steps with momentum 0.9 by default (SGD-UAP's and SGA's option; the papers' default is
      none): a random view per image makes the gradient noisy, and without momentum the robust δ's sign steps
      wander. Measured (CIFAR-10 ResNet-20, SGD-UAP B 32, 64 steps on 256 fit images, 300 held out): without
      momentum the rotation-robust δ fooled 0.25 at 10° against the plain δ's 0.36; with momentum 0.50 against
      0.35 (the plain δ is the same with or without it: 0.73 / 0.72 untransformed).

Measured: see the README's Studies section (``assets/studies/make_figures.sh robustness``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterator

from ..algorithms import ALGORITHMS
from ..models import get_spec, resolve_device
from ..params import param
from ..robustness import REAL_TRANSFORMS, compare, labels_under
from ..run_types import NORMS
from ..transforms import KINDS, robust_fields
from .base import CIFAR_TEST_IMAGES, Study, StudyResult
from . import figures

ROBUST_METHODS = tuple(name for name, cls in ALGORITHMS.items() if not cls.robust_refusal)
STRENGTH_UNITS = {"jpeg": "JPEG quality", "rotation": "rotation, degrees", "scale": "scale factor",
                  "blur": "blur σ, pixels", "brightness": "brightness factor"}


@dataclass
class Settings:
    model: str = param("cifar_resnet20", "Model to attack (a registry name).")
    images: str = param(CIFAR_TEST_IMAGES, "Image source: a folder, a .npz file, 'samples' or 'cifar10-test' (the "
                                             "CIFAR-10 test set, downloaded once: 170 MB). Needs fit + holdout "
                                             "images.")
    eps: float = param(8 / 255, "Budget in pixel units; n/255 accepted.", 1e-6, 1000.0)
    norm: str = param("linf", "Norm of the budget.", choices=NORMS)
    method: str = param("sgd_uap", "Method fitting both δ (a gradient method: one that takes robust).",
                        choices=ROBUST_METHODS)
    robust: list[str] = param(["jpeg", "rotation", "screen"], "One robust δ per entry, fitted through these "
                                                              "transformations (uap_core.transforms; screen: all "
                                                              "of them).", choices=tuple(k for k in KINDS if k != "off"))
    fit: int = param(1000, "Fit images (the same for both δ).", 1, 10_000_000)
    holdout: int = param(500, "Held-out images every transformation is measured on.", 1, 10_000_000)
    epochs: int = param(0, "Passes over the fit set per δ (0: the method's default).", 0, 100_000)
    batch_size: int = param(0, "The method's batch size (0: its default).", 0, 100_000)
    momentum: float = param(0.9, "Momentum of both δ's sign steps, for the methods that have one (SGA, SGD-UAP: "
                                 "v = μ v + g/|g|₁); 0.9 averages the noisy gradients of the random views "
                                 "(0: the method's default, off).", 0.0, 0.999)
    seed: int = param(0, "Seed of both runs (the split, the batch order; the robust run's views).", 0, 2**31 - 1)
    jpeg_qualities: list[int] = param([95, 85, 75, 65, 50, 40, 30], "JPEG qualities measured.", 1, 100)
    rotations: list[float] = param([0.0, 2.5, 5.0, 7.5, 10.0, 12.5, 15.0], "Rotations measured, degrees.",
                                   -180.0, 180.0)
    scales: list[float] = param([0.8, 0.9, 1.0, 1.1, 1.2], "Scale factors measured.", 0.1, 10.0)
    blur_sigmas: list[float] = param([0.0, 0.5, 1.0, 1.5], "Gaussian blur σ measured, pixels.", 0.0, 20.0)
    brightness: list[float] = param([0.6, 0.8, 1.0, 1.2, 1.4], "Brightness factors measured.", 0.0, 10.0)
    device: str = param("auto", "cpu, cuda or auto (the GPU when there is one).")


class RobustnessStudy(Study):
    name = "robustness"
    title = "Robustness: plain vs robust δ under real transformations"
    summary = ("Held-out fooling ratio of a plain δ and of robust (EOT) δ against JPEG quality, rotation, scale, "
               "blur and brightness.")
    paper = "Xu & Singh, ICML 2024 (robust UAPs); Athalye et al., ICML 2018 (expectation over transformation)"
    Settings = Settings
    table_names = ("curves", "runs")

    def __init__(self, settings: Any = None, device: str = "auto") -> None:
        super().__init__(settings, device)
        get_spec(self.settings.model)
        resolve_device(self.settings.device)

    def strengths(self) -> dict[str, list[float]]:
        s = self.settings
        return {"jpeg": list(s.jpeg_qualities), "rotation": list(s.rotations), "scale": list(s.scales),
                "blur": list(s.blur_sigmas), "brightness": list(s.brightness)}

    # ------------------------------------------------------------------------------------------ the work
    def _run(self) -> Iterator[tuple[float, str]]:
        from ..run import Run, RunConfig

        s = self.settings
        yield 0.0, f"loading {s.model} and the images"
        model, images = self.load_model_and_images(s.model)
        self.check_split(images, fit=s.fit, holdout=s.holdout)
        fields = ALGORITHMS[s.method].Params.__dataclass_fields__
        params = {"batch_size": s.batch_size} if s.batch_size else {}
        if s.momentum and "momentum" in fields:
            params["momentum"] = s.momentum
        strengths = self.strengths()
        deltas: dict[str, Any] = {}
        kinds = ["off", *dict.fromkeys(s.robust)]
        for i, robust in enumerate(kinds):
            label = "plain δ" if robust == "off" else f"robust δ ({robust})"
            config = RunConfig(model=s.model, algorithm=s.method, eps=s.eps, norm=s.norm, images=images.source,
                               fit=s.fit, holdout=s.holdout, seed=s.seed, device=self.device,
                               epochs=s.epochs or None, keep="last", eval_every=100_000_000, params=params,
                               robust=robust)
            run = Run(config, model=model, images=images)
            started = time.perf_counter()
            yield from self.fit(run, 0.7 * i / len(kinds), 0.7 * (i + 1) / len(kinds), label)
            result = run.result
            if result is None or result.reason == "stopped":
                return
            delta_name = "plain" if robust == "off" else robust
            deltas[delta_name] = result.delta
            held_out, precision = run.prepared.holdout_pixels, result.info["precision"]
            self.tables["runs"].append({
                "delta": delta_name, "robust": robust_fields(config), "method": s.method,
                "fooling_ratio": result.evaluation.fooling_ratio, "heldout_images": result.evaluation.count,
                "steps": result.steps, "image_gradients": result.info.get("image_gradients", 0),
                "seconds": round(time.perf_counter() - started, 3)})
        # the same held-out images for both (the same seed splits alike): the clean labels once, each τ(x) once
        clean = labels_under(model, held_out, None, "rotation", 0.0, precision)
        measures, done = sum(len(v) for v in strengths.values()), 0
        for kind in REAL_TRANSFORMS:
            for strength in strengths[kind]:
                if self.stopping:
                    return
                clean_t = labels_under(model, held_out, None, kind, strength, precision)
                for delta_name, delta in deltas.items():
                    found = compare(kind, strength, clean, clean_t,
                                    labels_under(model, held_out, delta, kind, strength, precision))
                    self.tables["curves"].append({
                        "delta": delta_name, "transformation": kind, "strength": strength,
                        "fooling_ratio": found.fooling_ratio, "fooling_ratio_vs_clean": found.fooling_ratio_vs_clean,
                        "transform_alone": found.transform_alone, "heldout_images": found.count})
                done += 1
                rows = self.tables["curves"][-len(deltas):]
                yield (0.7 + 0.3 * done / measures,
                       f"{kind} {strength:g}: fooling ratio " + ", ".join(f"{r['delta']} {r['fooling_ratio']:.3f}"
                                                                           for r in rows))

    def finish(self) -> None:
        """Per transformation: each δ's mean fooling ratio over the strengths, and each robust δ's gain over the
        plain one (mean of the differences)."""
        summary: dict[str, Any] = {}
        curves = self.tables["curves"]
        names = list(dict.fromkeys(r["delta"] for r in curves))
        for kind in REAL_TRANSFORMS:
            means = {}
            for delta in names:
                values = [r["fooling_ratio"] for r in curves if r["transformation"] == kind and r["delta"] == delta]
                means[delta] = sum(values) / len(values) if values else None
            entry: dict[str, Any] = {"plain_mean": means.get("plain")}
            for delta in names:
                if delta != "plain" and means.get(delta) is not None and means.get("plain") is not None:
                    entry[f"{delta}_mean"] = means[delta]
                    entry[f"{delta}_gain"] = means[delta] - means["plain"]
            summary[kind] = entry
        for row in self.tables["runs"]:
            summary[f"{row['delta']}_untransformed"] = row["fooling_ratio"]
        self.summary_values = summary

    # ------------------------------------------------------------------------------------------ the figure
    @staticmethod
    def figure(result: StudyResult):
        """One panel per transformation: the held-out fooling ratio of the plain δ and of each robust δ against the
        strength; dotted grey: the share of labels the transformation changes alone (no δ)."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        s = result.settings
        title = "Held-out fooling ratio under real transformations: plain vs robust δ"
        curves = result.tables.get("curves", [])
        if not curves:
            return figures.empty_figure(title, "no δ measured yet")
        subtitle = (f"{s.get('model')}, {s.get('method')}, eps {figures.eps_text(s.get('eps'), s.get('norm'))}, "
                    f"{s.get('fit')} fit / {s.get('holdout')} held-out images, seed {s.get('seed')}; robust δ: EOT "
                    "over the named transformations; label compared with the transformed clean image's")
        fig = make_subplots(rows=1, cols=len(REAL_TRANSFORMS), shared_yaxes=True, horizontal_spacing=0.03,
                            subplot_titles=[STRENGTH_UNITS[k] for k in REAL_TRANSFORMS])
        deltas = list(dict.fromkeys(r["delta"] for r in curves))
        names = {d: "plain δ" if d == "plain" else f"robust δ (EOT: {d})" for d in deltas}
        for col, kind in enumerate(REAL_TRANSFORMS, start=1):
            for i, delta in enumerate(deltas):
                points = sorted((r for r in curves if r["transformation"] == kind and r["delta"] == delta),
                                key=lambda r: r["strength"])
                if not points:
                    continue
                fig.add_trace(go.Scatter(
                    x=[p["strength"] for p in points], y=[figures.finite(p["fooling_ratio"]) for p in points],
                    mode="lines+markers", name=names[delta], legendgroup=delta, showlegend=col == 1,
                    line={"color": figures.color(i)}, marker={"color": figures.color(i), "size": 7},
                    hovertemplate=f"{names[delta]}<br>{STRENGTH_UNITS[kind]} %{{x}}<br>fooling ratio %{{y:.3f}}"
                                  "<extra></extra>"), row=1, col=col)
            alone = sorted((r for r in curves if r["transformation"] == kind and r["delta"] == "plain"),
                           key=lambda r: r["strength"])
            if alone:
                fig.add_trace(go.Scatter(
                    x=[p["strength"] for p in alone], y=[figures.finite(p["transform_alone"]) for p in alone],
                    mode="lines", name="labels the transformation alone changes", legendgroup="alone",
                    showlegend=col == 1, line={"color": figures.RANDOM_COLOR, "dash": "dot", "width": 1.5},
                    hovertemplate="no δ<br>%{x}: %{y:.3f}<extra></extra>"), row=1, col=col)
            if kind == "jpeg":
                fig.update_xaxes(autorange="reversed", row=1, col=col)  # stronger compression to the right
        figures.layout(fig, title + (" (stopped)" if result.stopped else ""), subtitle, height=460)
        fig.update_yaxes(range=[0, 1.02])
        fig.update_yaxes(title="held-out fooling ratio", row=1, col=1)
        return fig
