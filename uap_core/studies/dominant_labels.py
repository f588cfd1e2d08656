"""Dominant labels and logit correlations (Zhang, Benz, Imtiaz, Kweon, "Understanding adversarial examples from
the mutual influence of images and perturbations", CVPR 2020, Sec. 3–4).

For one UAP δ — a saved artifact (``uap`` = a file path, a library entry name or ``shipped: <name>``) or, with
``uap`` empty, one fitted here through :class:`uap_core.run.Run` with ``method`` on the fit split — and the held-out
images x:

- the label of δ **shown alone**: ``k(clamp(0.5 + δ, 0, 1))`` (δ on mid-grey, what a person sees) and ``k(δ)`` (δ
  fed as the input itself, the paper's way — see below);
- the histogram of the perturbed labels ``k(clamp(x + δ, 0, 1))`` (over all held-out images) and its mode, the
  **dominant label**;
- per image the Pearson correlations of the logit vectors (over the C classes)
  ``PCC(f(x), f(x+δ))`` and ``PCC(f(δ), f(x+δ))``, and the share of images where the second is larger: δ's own
  features decide the label;
- the same two correlations for random noise of δ's norm (L∞: uniform signs ±‖δ‖∞; L2: a random direction of length
  ‖δ‖₂) — the baseline: noise does not dominate the image;
- the flows clean label → perturbed label (the ``top_flows`` largest pairs; the rest grouped as "other") for a
  Sankey diagram.

**How f(δ) is fed.** The analysis notebook of the official repository (``pcc_analysis.ipynb`` in
``phibenz/uap_virtual_data.pytorch``; the cell was read in a copy of that notebook) computes the perturbation's
logits as ``model((uap - mean) / std)``: δ alone, in pixel units, values in [-eps, eps], **not** placed on grey and
not clamped (its +0.5 is only for display). We do exactly that for ``pcc_delta``; ``pcc_delta_grey`` is the same correlation with δ on mid-grey
``clamp(0.5 + δ)`` (the variant docs/algorithms.md writes), reported beside it. Where we differ from the paper:
x + δ is clamped to [0, 1] (the paper's code does not clamp), as everywhere in this project.

The paper's statements (ImageNet, VGG/ResNet, UAP eps 10/255): for a UAP, ``PCC(f(x), f(x+δ))`` is low and
``PCC(f(δ), f(x+δ))`` high — "the image behaves like noise to the perturbation"; the label of x + δ is mostly the
label of δ alone.

A loaded UAP is measured on the same held-out images a fitted one would be (the seeded split by ``fit``,
``holdout``, ``seed``), so a saved δ and the δ fitted here with the same settings give the same rows.

Measured (CIFAR-10 ResNet-20, eps 8/255 L∞, the defaults: SGA with its paper settings — 20 epochs, B 250, m 10,
K 4 — fitted on 500 images, measured on 1,000 held-out ones; ``python -m uap_core study dominant_labels``, run
through this class on the CPU, 105 s on 2 shared cores):

    fooling ratio 0.835 (random ±eps noise 0.308); δ alone → "frog" (on grey too); dominant label "frog",
    0.87 of the held-out images (δ's own label: the paper's observation holds; random noise sends 0.24 of them
    to "frog" as well, against 0.10 clean — this model's own noise bias);
    PCC(f(δ), f(x+δ)) > PCC(f(x), f(x+δ)) for 0.823 of the images (for same-size random noise n:
    PCC(f(n), f(x+n)) > PCC(f(x), f(x+n)) for 0.144); mean PCC(f(x), f(x+δ)) 0.28, mean PCC(f(δ), f(x+δ)) 0.76
    (δ on grey: 0.79); for the noise 0.81 and 0.37.

So the paper's claim holds at this scale for a converged UAP: the perturbation, not the image, decides the logits.
For a weaker UAP it holds only partly: the test's setting (2 epochs of B 100, 20 aggregated steps, 500 held-out
images) gives fooling ratio 0.54 (noise 0.31), dominant "frog" 0.35 while δ alone says "bird", and δ dominates the
logits of 0.41 of the images (noise 0.14) — well above noise, but not a majority.

Tables: ``images`` (one row per held-out image), ``histogram`` (perturbed labels, sorted), ``flows`` (Sankey links).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator

import torch

from .. import metrics
from ..algorithms import ALGORITHMS, get_algorithm
from ..artifacts import load_uap
from ..errors import ArtifactError, ParameterError
from ..evaluation import predict_logits
from ..images import ImageSet
from ..library import CombinedLibrary, UAPLibrary, library_root, shipped_library
from ..models import Classifier, get_spec
from ..params import param
from ..run import Run, RunConfig
from ..run_types import NORMS
from .base import CIFAR_TEST_IMAGES, Study, StudyResult


# ---------------------------------------------------------------------------------------------- shared helpers
def check_model(name: str) -> None:
    """ParameterError for an unknown model or an ensemble (these studies need one classifier)."""
    spec = get_spec(name)
    if spec.family == "ensemble":
        raise ParameterError(f"this study takes one model, not an ensemble ({name})")


def held_out_only(images: ImageSet, fit: int, holdout: int, seed: int) -> ImageSet:
    """The held-out images of a study that fits nothing (a saved UAP): the same ``holdout`` images a fit would have
    left out (``images.split(fit', holdout, seed)`` with fit' = min(fit, what remains), so a saved UAP is measured
    where a fitted one would be) while at least one image remains beside them; when the source holds exactly
    ``holdout`` images, all of them, in the seed's order."""
    if len(images) > holdout:
        return images.split(max(1, min(fit, len(images) - holdout)), holdout, seed)[1]
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(int(seed)))
    return images.subset(order[:holdout])


def method_params(method: str, batch_size: int) -> dict[str, Any]:
    """The ``params`` of a Run: the method's batch size where it has one and ``batch_size`` > 0, else none."""
    if batch_size <= 0:
        return {}
    fields = {f.name for f in dataclasses.fields(get_algorithm(method).Params)}
    if "batch_size" in fields:
        return {"batch_size": batch_size}
    if "images_per_step" in fields:  # UAP: progress granularity only
        return {"images_per_step": batch_size}
    return {}


def fit_uap(study: Study, config: RunConfig, model: Classifier, images: ImageSet, start: float, span: float,
            label: str) -> Iterator[tuple[float, str]]:
    """Fit a UAP through :class:`Run` (``config`` on ``images``, the given ``model``) with :meth:`Study.fit`,
    yielding study progress from ``start`` to ``start + span``. The run is left in ``study._last_run`` (its
    ``result`` set at the end)."""
    run = Run(config, model=model, images=images)
    study._last_run = run
    for fraction, message in study.fit(run, start, start + span, label):
        yield round(fraction, 9), message  # as the callers round their own fractions (finetune.py)


def random_like(delta: torch.Tensor, norm: str, generator: torch.Generator) -> torch.Tensor:
    """Random noise of δ's own size (3, H, W): L∞ uniform signs ±‖δ‖∞, L2 a random direction of length ‖δ‖₂."""
    size = delta.abs().max().item() if norm == "linf" else delta.norm().item()
    return metrics.random_perturbation(tuple(delta.shape), size, norm, generator, delta.device)


def resolve_uap_path(value: str) -> Path:
    """A UAP file path, or the name of a library entry: one of the user's library (``$UAP_LIBRARY_DIR``, default
    ~/.uap_explorer/library) or of the shipped zoo (``"shipped: <name>"``). ParameterError if none exists."""
    path = Path(value).expanduser()
    if path.is_file():
        return path
    library = CombinedLibrary(UAPLibrary(library_root(), read_only=True), [shipped_library()])
    try:
        entry = library.path_of(value)
    except (ParameterError, ArtifactError):
        entry = None
    if entry is not None and entry.is_file():
        return entry
    raise ParameterError(f"uap {value!r} is neither a file nor an entry of the library {library_root()} "
                         "(or of the shipped zoo, as 'shipped: <name>')")


# ---------------------------------------------------------------------------------------------- the study
@dataclass
class DominantLabelsSettings:
    model: str = param("cifar_resnet20", "Model (registry name).")
    images: str = param(CIFAR_TEST_IMAGES, "Image source: a .npz, a folder, 'samples' or 'cifar10-test' (the "
                                             "CIFAR-10 test set, downloaded once: 170 MB).")
    uap: str = param("", "A saved UAP: a file path, a library entry name or 'shipped: <name>'. Empty: fit one "
                         "here with `method`.")
    method: str = param("sga", "Method that fits the UAP when `uap` is empty.", choices=tuple(ALGORITHMS))
    eps: float = param(8 / 255, "Budget of the fitted UAP in pixel units (8/255 L∞ is CIFAR's usual).", 1e-6,
                       1000.0)
    norm: str = param("linf", "Norm of the budget (also of a loaded UAP when its metadata says none).",
                      choices=NORMS)
    fit: int = param(500, "Images the UAP is fitted on (ignored for a loaded UAP).", 1, 1_000_000)
    holdout: int = param(1000, "Held-out images every measure is taken on.", 1, 1_000_000)
    epochs: int = param(0, "Epochs of the fit (0: the method's default; SGA: 20).", 0, 10_000)
    batch_size: int = param(0, "Batch size of the fit (0: the method's default; SGA: 250).", 0, 100_000)
    top_flows: int = param(10, "Labels drawn on their own in the Sankey: the most frequent perturbed labels of the "
                               "fooled images (the rest: one 'other' target; unfooled images: 'unchanged') and "
                               "the clean labels with the most images (the rest: 'other').", 1, 1000)
    seed: int = param(0, "Seed of the split, the fit and the random noise.", 0, 2**31 - 1)


class DominantLabels(Study):
    name: ClassVar[str] = "dominant_labels"
    title: ClassVar[str] = "Dominant labels and logit correlations"
    summary: ClassVar[str] = ("Where a UAP sends the images, the label of δ alone, and whether f(x+δ) correlates "
                              "more with f(δ) than with f(x).")
    paper: ClassVar[str] = ("Zhang, Benz, Imtiaz, Kweon, Understanding adversarial examples from the mutual "
                            "influence of images and perturbations, CVPR 2020 (Sec. 3, PCC analysis)")
    Settings: ClassVar[type] = DominantLabelsSettings
    table_names: ClassVar[tuple[str, ...]] = ("images", "histogram", "flows")

    def __init__(self, settings: Any = None, device: str = "auto") -> None:
        super().__init__(settings, device)
        s = self.settings
        check_model(s.model)
        if s.uap:
            resolve_uap_path(s.uap)
        if s.norm == "linf" and s.eps > 1:
            raise ParameterError(f"eps = {s.eps:g} is out of range for L∞; allowed (0, 1]")
        self.info: dict[str, Any] = {}
        self._last_run: Run | None = None

    def images_required(self) -> int:
        """fit + holdout when the UAP is fitted here; a saved UAP needs the held-out images only."""
        return self.settings.holdout + (0 if self.settings.uap else self.settings.fit)

    # ------------------------------------------------------------------------------------------ the work
    def _run(self) -> Iterator[tuple[float, str]]:
        s = self.settings
        device = self.run_device()
        yield 0.0, "loading the model and images"
        model, images = self.load_model_and_images(s.model, prepare=True)
        spec = model.spec
        if s.uap:
            path = resolve_uap_path(s.uap)
            try:
                artifact = load_uap(path, expected_size=(spec.input_size, spec.input_size))
            except ArtifactError as e:
                raise ParameterError(f"uap {s.uap!r}: {e}") from None
            delta = artifact.delta.to(device)
            norm = artifact.metadata.get("norm") if artifact.metadata.get("norm") in ("linf", "l2") else s.norm
            self.check_split(images, holdout=s.holdout)  # nothing is fitted: every image may be held out
            holdout = held_out_only(images, s.fit, s.holdout, s.seed)
            self.info.update(uap_source=str(path), uap_model=artifact.metadata.get("model"),
                             uap_algorithm=artifact.metadata.get("algorithm"), fit_images=None)
        else:
            self.check_split(images, fit=s.fit, holdout=s.holdout)
            config = RunConfig(model=s.model, algorithm=s.method, eps=s.eps, norm=s.norm, images=s.images,
                               fit=s.fit, holdout=s.holdout, seed=s.seed, device=str(device),
                               epochs=s.epochs or None, params=method_params(s.method, s.batch_size),
                               eval_every=10**8, keep="last", compile="off", precision="fp32")
            yield from fit_uap(self, config, model, images, 0.02, 0.83, f"fitting {s.method}")
            run = self._last_run
            if run is None or run.result is None:
                return
            delta, norm, holdout = run.result.delta.to(device), s.norm, run.holdout_set
            self.info.update(uap_source=f"fitted: {s.method}", uap_model=s.model, uap_algorithm=s.method,
                             fit_images=s.fit, fit_seconds=round(run.result.seconds, 2))
        yield 0.86, "measuring on the held-out images"
        self._measure(model, holdout, delta, norm, device)
        yield 1.0, "done"

    def _measure(self, model: Classifier, holdout: ImageSet, delta: torch.Tensor, norm: str,
                 device: torch.device) -> None:
        s = self.settings
        names = list(model.spec.class_names)
        pixels = holdout.pixels.to(device)
        noise = random_like(delta, norm, torch.Generator().manual_seed(s.seed + 7))
        clean = predict_logits(model, pixels, None, "fp32")
        perturbed = predict_logits(model, pixels, delta, "fp32")
        noisy = predict_logits(model, pixels, noise, "fp32")
        with torch.inference_mode():
            alone = model(torch.stack([delta, noise]).contiguous(memory_format=torch.channels_last)).float()
            grey = model((0.5 + delta)[None].clamp(0, 1).contiguous(memory_format=torch.channels_last)).float()
        delta_logits, noise_logits = alone[0], alone[1]
        pcc_image = metrics.pearson(clean, perturbed).cpu()
        pcc_delta = metrics.pearson(delta_logits.expand_as(perturbed), perturbed).cpu()
        pcc_grey = metrics.pearson(grey.expand_as(perturbed), perturbed).cpu()
        pcc_image_noise = metrics.pearson(clean, noisy).cpu()
        pcc_noise = metrics.pearson(noise_logits.expand_as(noisy), noisy).cpu()
        clean_labels, perturbed_labels = clean.argmax(1).cpu(), perturbed.argmax(1).cpu()
        noisy_labels = noisy.argmax(1).cpu()
        truth = holdout.labels.cpu()
        rows = self.tables["images"]
        for i in range(len(holdout)):
            c, p = int(clean_labels[i]), int(perturbed_labels[i])
            rows.append({
                "image": holdout.names[i], "true_label": int(truth[i]), "clean_label": c, "clean_name": names[c],
                "perturbed_label": p, "perturbed_name": names[p], "fooled": c != p,
                "pcc_image": round(float(pcc_image[i]), 6), "pcc_delta": round(float(pcc_delta[i]), 6),
                "delta_dominates": bool(pcc_delta[i] > pcc_image[i]), "pcc_delta_grey": round(float(pcc_grey[i]), 6),
                "noise_label": int(noisy_labels[i]), "pcc_image_noise": round(float(pcc_image_noise[i]), 6),
                "pcc_noise": round(float(pcc_noise[i]), 6), "noise_dominates": bool(pcc_noise[i] > pcc_image_noise[i]),
            })
        delta_label, grey_label = int(delta_logits.argmax()), int(grey[0].argmax())
        counts = torch.bincount(perturbed_labels, minlength=len(names))
        clean_counts = torch.bincount(clean_labels, minlength=len(names))
        noise_counts = torch.bincount(noisy_labels, minlength=len(names))
        order = sorted(range(len(names)), key=lambda k: (-int(counts[k]), -int(clean_counts[k]), k))
        for k in order:
            if counts[k] == 0 and clean_counts[k] == 0:
                continue
            self.tables["histogram"].append({
                "label": k, "name": names[k], "perturbed_count": int(counts[k]),
                "perturbed_share": round(int(counts[k]) / len(holdout), 6), "clean_count": int(clean_counts[k]),
                "noise_count": int(noise_counts[k]), "is_delta_label": k == delta_label,
                "is_grey_label": k == grey_label})
        self.tables["flows"].extend(flow_rows(clean_labels, perturbed_labels, names, s.top_flows))
        self.info.update(
            delta_label=delta_label, delta_name=names[delta_label], grey_label=grey_label,
            grey_name=names[grey_label], norm=norm, **{k: round(v, 6) for k, v in metrics.norms(delta).items()},
            fooling_ratio=metrics.fooling_ratio(clean_labels, perturbed_labels),
            noise_fooling_ratio=metrics.fooling_ratio(clean_labels, noisy_labels))

    def finish(self) -> None:
        rows = self.tables["images"]
        summary: dict[str, Any] = dict(self.info)
        if rows:
            n = len(rows)
            histogram = self.tables["histogram"]
            top = histogram[0] if histogram else None
            summary.update(
                images=n,
                share_delta_dominates=sum(r["delta_dominates"] for r in rows) / n,
                share_noise_dominates=sum(r["noise_dominates"] for r in rows) / n,
                mean_pcc_image=_mean(r["pcc_image"] for r in rows),
                mean_pcc_delta=_mean(r["pcc_delta"] for r in rows),
                mean_pcc_delta_grey=_mean(r["pcc_delta_grey"] for r in rows),
                mean_pcc_image_noise=_mean(r["pcc_image_noise"] for r in rows),
                mean_pcc_noise=_mean(r["pcc_noise"] for r in rows),
                share_grey_dominates=sum(r["pcc_delta_grey"] > r["pcc_image"] for r in rows) / n,
                dominant_label=top["label"] if top else None, dominant_name=top["name"] if top else None,
                dominant_share=top["perturbed_share"] if top else 0.0,
                noise_dominant_share=max((h["noise_count"] for h in histogram), default=0) / n,
                dominant_is_delta_label=bool(top and top["label"] == self.info.get("delta_label")),
                share_with_delta_label=sum(r["perturbed_label"] == self.info.get("delta_label") for r in rows) / n,
            )
        self.summary_values = summary

    # ------------------------------------------------------------------------------------------ the figure
    @staticmethod
    def figure(result: StudyResult):
        """Top left: the two PCC histograms overlaid (and the noise baseline's δ-side PCC, dotted outline); top
        right: the perturbed-label counts (δ's own label marked); bottom: the Sankey of clean → perturbed labels."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        rows = result.tables.get("images", [])
        histogram = result.tables.get("histogram", [])[:20]
        flows = result.tables.get("flows", [])
        summary = result.summary
        fig = make_subplots(
            rows=2, cols=2, row_heights=[0.45, 0.55], vertical_spacing=0.12,
            specs=[[{"type": "xy"}, {"type": "xy"}], [{"type": "domain", "colspan": 2}, None]],
            subplot_titles=("Logit PCC per held-out image", "Perturbed labels (held-out)",
                            "Clean → perturbed label"))
        bins = dict(start=-1.0, end=1.0, size=0.05)
        for key, label, color in (("pcc_image", "PCC(f(x), f(x+δ))", "#1f77b4"),
                                  ("pcc_delta", "PCC(f(δ), f(x+δ))", "#d62728"),
                                  ("pcc_noise", "noise: PCC(f(n), f(x+n))", "#7f7f7f")):
            fig.add_trace(go.Histogram(x=[r[key] for r in rows], xbins=bins, name=label, opacity=0.55,
                                       marker_color=color, legendgroup="pcc"), row=1, col=1)
        delta_label = summary.get("delta_label")
        fig.add_trace(go.Bar(x=[h["name"] for h in histogram], y=[h["perturbed_count"] for h in histogram],
                             marker_color=["#d62728" if h["label"] == delta_label else "#9467bd" for h in histogram],
                             name="perturbed label count", showlegend=False,
                             hovertemplate="%{x}: %{y} images<extra></extra>"), row=1, col=2)
        # nodes by label id (names may repeat); "other" and "unchanged" last, grey; each with its image count
        source_names = {f["source_label"]: f["source"] for f in flows}
        target_names = {f["target_label"]: f["target"] for f in flows}
        into = {k: sum(f["count"] for f in flows if f["target_label"] == k) for k in target_names}
        out_of = {k: sum(f["count"] for f in flows if f["source_label"] == k) for k in source_names}
        sources = sorted(source_names, key=lambda k: (k < 0, -out_of[k], k))
        targets = sorted(target_names, key=lambda k: (k < 0, -into[k], -k))
        labels = ([f"{source_names[k]} ({out_of[k]})" for k in sources]
                  + [f"→ {target_names[k]} ({into[k]})" for k in targets])
        colors = (["#1f77b4" if k >= 0 else "#c7c7c7" for k in sources]
                  + ["#d62728" if k == delta_label else "#9467bd" if k >= 0 else "#c7c7c7" for k in targets])
        fig.add_trace(go.Sankey(
            arrangement="snap", textfont=dict(size=11),
            node=dict(label=labels, color=colors, pad=12, thickness=14),
            link=dict(source=[sources.index(f["source_label"]) for f in flows],
                      target=[len(sources) + targets.index(f["target_label"]) for f in flows],
                      value=[f["count"] for f in flows])), row=2, col=1)
        fig.update_layout(barmode="overlay", height=900,
                          title=(f"{result.title}: δ alone → {summary.get('delta_name')}; dominant "
                                 f"{summary.get('dominant_name')} ({_pct(summary.get('dominant_share'))}); "
                                 f"PCC(f(δ),·) > PCC(f(x),·) for {_pct(summary.get('share_delta_dominates'))} "
                                 f"(noise {_pct(summary.get('share_noise_dominates'))})"),
                          legend=dict(x=0.01, y=0.99, xanchor="left", yanchor="top", bgcolor="rgba(255,255,255,0.7)"))
        fig.update_xaxes(title_text="Pearson correlation of logit vectors", range=[-1, 1], row=1, col=1)
        fig.update_yaxes(title_text="images", row=1, col=1)
        fig.update_yaxes(title_text="images", row=1, col=2)
        return fig


OTHER_LABEL = -1  # a Sankey node of every label not drawn on its own
UNCHANGED_LABEL = -2  # the Sankey target of the images whose label δ does not change


def flow_rows(clean: torch.Tensor, perturbed: torch.Tensor, names: list[str], top: int) -> list[dict[str, Any]]:
    """Links of the Sankey, grouped by the perturbed labels that matter, so that it reads at 1,000 classes too.

    Targets: the ``top`` most frequent perturbed labels among the fooled images (a UAP's dominant labels) each
    its own node; every other fooled image goes to "other" (label -1); an image whose label δ leaves alone goes to
    "unchanged" (label -2), not to a node of its own class. Sources: the ``top`` clean labels with the most images,
    the rest "other" (-1). One row per (source, target) with a count, largest first; the counts add up to the
    number of images. clean, perturbed: (N,) int64 labels."""
    clean_list, perturbed_list = clean.tolist(), perturbed.tolist()
    fooled_counts: dict[int, int] = {}
    clean_counts: dict[int, int] = {}
    for c, p in zip(clean_list, perturbed_list):
        clean_counts[c] = clean_counts.get(c, 0) + 1
        if c != p:
            fooled_counts[p] = fooled_counts.get(p, 0) + 1
    targets = {k for k, _ in sorted(fooled_counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]}
    sources = {k for k, _ in sorted(clean_counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]}
    pairs: dict[tuple[int, int], int] = {}
    for c, p in zip(clean_list, perturbed_list):
        target = UNCHANGED_LABEL if c == p else p if p in targets else OTHER_LABEL
        key = (c if c in sources else OTHER_LABEL, target)
        pairs[key] = pairs.get(key, 0) + 1

    def name(label: int, unchanged: str = "unchanged") -> str:
        return names[label] if label >= 0 else unchanged if label == UNCHANGED_LABEL else "other"

    return [{"source": name(c), "target": name(p), "source_label": c, "target_label": p, "count": n}
            for (c, p), n in sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))]


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else math.nan


def _pct(value) -> str:
    return "–" if value is None else f"{100 * float(value):.0f} %"
