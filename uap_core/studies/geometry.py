"""Why UAPs exist: the normals to the decision boundary share a low-dimensional subspace (Moosavi-Dezfooli, Fawzi,
Fawzi, Frossard, "Universal adversarial perturbations", CVPR 2017, Sec. 4 "Explaining the vulnerability to
universal perturbations", Fig. 9).

The paper's experiment, and ours:

1. At each of ``normals`` images x compute DeepFool's minimal perturbation r(x) (the L2-smallest step to the
   nearest decision boundary, linearised; the DeepFool of :mod:`uap_core.algorithms.uap`, top-10 classes,
   overshoot 0.02, at most 10 iterations) and its direction n(x) = r(x)/‖r(x)‖₂, the normal to the boundary near
   x. Images where DeepFool does not change the label are left out (counted in the summary).
2. Stack them as the columns of N = [n(x_1) … n(x_n)] (d × n, d = 3·H·W) and take its singular values; do the
   same for as many random unit vectors (Gaussian, normalised: uniform on the sphere). The paper: the normals'
   singular values decay much faster — the normals lie close to a low-dimensional subspace S.
3. Draw random vectors from S (the span of N's first k left singular vectors: v = U_k z, z ~ N(0, I_k)) and
   uniformly random vectors in R^d, both scaled to the same L2 norm ξ, and measure their fooling ratio on held-out
   images (not those whose normals built S). The paper (ImageNet, CaffeNet, k = 100, ξ = 2000 on the 0–255
   scale at 224×224): 38 % for S against 10 % for uniformly random vectors.

Scaling to the input: ξ = 2000 at 224×224×3 means an RMS of 2000/255/sqrt(150528) ≈ 0.0202 per entry (≈ 5.2 grey
levels); we keep that RMS, so ξ_1 = (2000/255)·sqrt(d/150528) — 1.12 pixel units (286 on the 0–255 scale) for
CIFAR's d = 3072 — and ``norm_scales`` multiplies it. k = 100 of d = 150528 is 0.07 % of the dimensions; on
CIFAR that would be k = 2, so ``subspace_dims`` sweeps k (default 10, 30, 100: 0.3–3 % of d).

Where we differ: the paper computes the normals on 10,000 ImageNet images at d = 150528; the default here is 1,000
CIFAR-10 images at d = 3072 (n < d either way, so the random matrix's singular values are those of a d × n
Gaussian matrix: nearly flat). x + v is clamped to [0, 1] when measuring.

Measured (CIFAR-10 ResNet-20, the defaults: 1,000 normals, 1,000 held-out images, 10 draws per bar;
``python -m uap_core study geometry``, run through this class on the CPU, 520 s on 2 shared cores): DeepFool
changed the label of all 1,000 images, median ‖r(x)‖₂ = 0.053 (13/255).

    singular value ÷ the first     σ_10    σ_100   σ_500   σ_1000   energy in the top 100
    DeepFool normals               0.91    0.69    0.29    0.057    38 %
    random unit vectors            0.97    0.87    0.60    0.27     21 %

    fooling ratio (mean of 10)     top-10   top-30   top-100 subspace   uniformly random
    ξ/2 = 0.56 (143/255)           0.19     0.20     0.21               0.083
    ξ   = 1.12 (286/255)           0.34     0.35     0.38               0.19
    2ξ  = 2.24 (571/255)           0.52     0.58     0.62               0.42

The claim holds at this scale: the normals' spectrum falls faster, and at the paper-equivalent norm a random vector
from the top-100 subspace fools 0.38 of the held-out images against 0.19 for a uniformly random one (paper, on
ImageNet: 38 % against 10 %). Differences: the decay is gentler than in the paper's ImageNet plot (d is 49 times
smaller and n/d a third, so even the random spectrum spreads), and CIFAR-10 ResNet-20 is more sensitive to random
noise (0.19 against 10 %), so the ratio is about 2 rather than 4. With 200 normals (the test's setting, 500 held
out, 5 draws): σ_10/σ_1 0.89 against 0.97, top-10 energy 11 % against 7.5 %, fooling ratio 0.38 against 0.20.

Tables: ``singular_values`` (index, normals and random, raw and divided by the first), ``fooling`` (kind, k,
norm scale, L2 norm, mean/std/min/max fooling ratio over ``draws`` random vectors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator

import torch

from .. import metrics
from ..algorithms import AttackSetup
from ..algorithms.uap import UAP, UAPParams
from ..errors import ParameterError
from ..evaluation import predict_labels
from ..models import Classifier
from ..params import param
from .base import CIFAR_TEST_IMAGES, Study, StudyResult
from .dominant_labels import check_model

PAPER_XI = 2000 / 255  # the paper's L2 norm in pixel units at 224×224×3
PAPER_DIM = 3 * 224 * 224

def paper_equivalent_norm(dimension: int) -> float:
    """The paper's ξ = 2000/255 (224×224×3) carried to ``dimension`` entries at the same RMS per entry, pixel units."""
    return PAPER_XI * math.sqrt(dimension / PAPER_DIM)


@dataclass
class GeometrySettings:
    model: str = param("cifar_resnet20", "Model (registry name).")
    images: str = param(CIFAR_TEST_IMAGES, "Image source: a .npz, a folder, 'samples' or 'cifar10-test' (the "
                                             "CIFAR-10 test set, downloaded once: 170 MB).")
    normals: int = param(1000, "Images whose DeepFool normals form the matrix N (paper: 10,000 ImageNet "
                               "images).", 2, 100_000)
    holdout: int = param(1000, "Held-out images the random vectors' fooling ratios are measured on.", 1,
                         1_000_000)
    subspace_dims: list[int] = param([10, 30, 100], "k: random vectors are drawn from the span of the first k "
                                                    "singular vectors (paper: 100 at d = 150528).", 1, 100_000)
    norm_scales: list[float] = param([0.5, 1.0, 2.0], "L2 norms as multiples of the paper's ξ = 2000/255 "
                                                      "carried to this input at the same RMS per entry.",
                                     0.001, 1000.0)
    draws: int = param(10, "Random vectors per kind and norm (their fooling ratios are averaged).", 1, 10_000)
    seed: int = param(0, "Seed of the split and of the random vectors.", 0, 2**31 - 1)


class Geometry(Study):
    name: ClassVar[str] = "geometry"
    title: ClassVar[str] = "Geometry: normals to the decision boundary"
    summary: ClassVar[str] = ("DeepFool normals span a low-dimensional subspace: their singular values fall faster "
                              "than random vectors', and random vectors from that subspace fool more images.")
    paper: ClassVar[str] = ("Moosavi-Dezfooli, Fawzi, Fawzi, Frossard, Universal adversarial perturbations, "
                            "CVPR 2017 (Sec. 4, Fig. 9)")
    Settings: ClassVar[type] = GeometrySettings
    table_names: ClassVar[tuple[str, ...]] = ("singular_values", "fooling")

    def __init__(self, settings: Any = None, device: str = "auto") -> None:
        super().__init__(settings, device)
        check_model(self.settings.model)
        self.info: dict[str, Any] = {}

    def images_required(self) -> int:
        return self.settings.normals + self.settings.holdout

    def _run(self) -> Iterator[tuple[float, str]]:
        s = self.settings
        device = self.run_device()
        yield 0.0, "loading the model and images"
        model, images = self.load_model_and_images(s.model, prepare=True)
        self.check_split(images, normals=s.normals, holdout=s.holdout)
        fit, holdout = images.split(s.normals, s.holdout, s.seed)
        dimension = int(fit.pixels[0].numel())

        # 1. DeepFool normals
        normals: list[torch.Tensor] = []
        distances: list[float] = []
        failed = 0
        for i, r in enumerate(deepfool_perturbations(model, fit.pixels.to(device))):
            if r is None:
                failed += 1
            else:
                length = r.norm()
                normals.append((r / length).flatten().float().cpu())
                distances.append(length.item())
            if (i + 1) % 25 == 0 or i + 1 == len(fit):
                yield 0.02 + 0.68 * (i + 1) / len(fit), f"DeepFool normals: {i + 1}/{len(fit)}"
        if len(normals) < 2:
            raise ParameterError(f"DeepFool changed the label of only {len(normals)} of {len(fit)} images; "
                                 "need at least 2 normals")
        n_matrix = torch.stack(normals, 1)  # (d, n) float32
        normals_used = len(normals)
        del normals

        # 2. singular values (through the n × n Gram matrix: memory n², not d·n, for ImageNet-sized d)
        yield 0.72, "singular values"
        k_max = min(max(s.subspace_dims), n_matrix.shape[1])
        sv_normals, basis = top_singular(n_matrix, k_max)
        del n_matrix
        sv_random = random_unit_spectrum(dimension, len(sv_normals), torch.Generator().manual_seed(s.seed))
        first_n, first_r = sv_normals[0].item(), sv_random[0].item()
        for i in range(len(sv_normals)):
            self.tables["singular_values"].append({
                "index": i + 1, "normals": sv_normals[i].item(), "random": sv_random[i].item(),
                "normals_normalised": sv_normals[i].item() / first_n,
                "random_normalised": sv_random[i].item() / first_r})

        # 3. fooling ratios of random vectors from the top-k subspace and uniformly random ones, same L2 norm
        pixels = holdout.pixels.to(device)
        clean = predict_labels(model, pixels, None, "fp32").cpu()
        dims = list(dict.fromkeys(s.subspace_dims))
        kinds = [("subspace", min(k, basis.shape[1])) for k in dims] + [("random", dimension)]
        total = len(kinds) * len(s.norm_scales) * s.draws
        done = 0
        shape = tuple(fit.pixels.shape[1:])
        for scale in s.norm_scales:
            xi = scale * paper_equivalent_norm(dimension)
            for kind, k in kinds:
                ratios = []
                draw_generator = torch.Generator().manual_seed(s.seed * 1_000_003 + k * 101 + round(scale * 1000))
                for _ in range(s.draws):
                    if kind == "subspace":
                        v = basis[:, :k] @ torch.randn(k, generator=draw_generator, dtype=torch.float64)
                    else:
                        v = torch.randn(dimension, generator=draw_generator, dtype=torch.float64)
                    v = (v * (xi / v.norm())).float().view(shape).to(device)
                    perturbed = predict_labels(model, pixels, v, "fp32").cpu()
                    ratios.append(metrics.fooling_ratio(clean, perturbed))
                    done += 1
                    yield 0.75 + 0.25 * done / total, f"fooling ratios: {done}/{total}"
                mean = sum(ratios) / len(ratios)
                std = math.sqrt(sum((x - mean) ** 2 for x in ratios) / max(1, len(ratios) - 1))
                self.tables["fooling"].append({
                    "kind": kind, "k": k, "norm_scale": scale, "l2": round(xi, 6), "l2_255": round(xi * 255, 3),
                    "fooling_ratio": mean, "std": std, "min": min(ratios), "max": max(ratios), "draws": len(ratios),
                    "label": f"top-{k} subspace" if kind == "subspace" else "uniformly random"})
        distances.sort()
        self.info.update(dimension=dimension, normals_used=normals_used, deepfool_failed=failed,
                         median_deepfool_l2=distances[len(distances) // 2], heldout_images=len(holdout),
                         paper_equivalent_l2=paper_equivalent_norm(dimension))

    def finish(self) -> None:
        summary: dict[str, Any] = dict(self.info)
        sv = self.tables["singular_values"]
        if sv:
            total_n = sum(r["normals"] ** 2 for r in sv)
            total_r = sum(r["random"] ** 2 for r in sv)
            for k in dict.fromkeys(self.settings.subspace_dims):
                if k <= len(sv):
                    summary[f"sv_normalised_normals_k{k}"] = sv[k - 1]["normals_normalised"]
                    summary[f"sv_normalised_random_k{k}"] = sv[k - 1]["random_normalised"]
                    summary[f"energy_top{k}_normals"] = sum(r["normals"] ** 2 for r in sv[:k]) / total_n
                    summary[f"energy_top{k}_random"] = sum(r["random"] ** 2 for r in sv[:k]) / total_r
        for row in self.tables["fooling"]:
            key = f"fr_subspace_k{row['k']}" if row["kind"] == "subspace" else "fr_random"
            summary[f"{key}_scale{row['norm_scale']:g}"] = row["fooling_ratio"]
        self.summary_values = summary

    @staticmethod
    def figure(result: StudyResult):
        """Left: singular values of the normals and of random unit vectors, each divided by its first (log y).
        Right: mean fooling ratio (± std over the draws) of random vectors from the top-k subspace and uniformly
        random ones, one bar group per L2 norm."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        sv = result.tables.get("singular_values", [])
        fooling = result.tables.get("fooling", [])
        fig = make_subplots(rows=1, cols=2, column_widths=[0.55, 0.45],
                            subplot_titles=("Singular values of the matrix of normals (÷ the first)",
                                            "Fooling ratio of random vectors (held-out)"))
        index = [r["index"] for r in sv]
        fig.add_trace(go.Scatter(x=index, y=[r["normals_normalised"] for r in sv], mode="lines",
                                 name="DeepFool normals", line=dict(color="#d62728")), row=1, col=1)
        fig.add_trace(go.Scatter(x=index, y=[r["random_normalised"] for r in sv], mode="lines",
                                 name="random unit vectors", line=dict(color="#7f7f7f", dash="dash")), row=1, col=1)
        scales = list(dict.fromkeys(r["norm_scale"] for r in fooling))
        for scale in scales:
            rows = [r for r in fooling if r["norm_scale"] == scale]
            fig.add_trace(go.Bar(x=[r["label"] for r in rows], y=[r["fooling_ratio"] for r in rows],
                                 error_y=dict(type="data", array=[r["std"] for r in rows]),
                                 name=f"‖v‖₂ = {rows[0]['l2']:.2f} ({rows[0]['l2_255']:.0f}/255)"), row=1, col=2)
        fig.update_yaxes(type="log", title_text="σ_i / σ_1", row=1, col=1)
        fig.update_xaxes(title_text="index i", row=1, col=1)
        fig.update_yaxes(title_text="fooling ratio", rangemode="tozero", row=1, col=2)
        summary = result.summary
        fig.update_layout(barmode="group", height=520, legend=dict(orientation="h", y=-0.2),
                          title=(f"{result.title}: {summary.get('normals_used', '?')} normals in d = "
                                 f"{summary.get('dimension', '?')}"))
        return fig


def deepfool_perturbations(model: Classifier, pixels: torch.Tensor) -> Iterator[torch.Tensor | None]:
    """DeepFool's minimal perturbation r(x) (3, H, W), pixel units, for each image of ``pixels`` (N, 3, H, W) uint8,
    or None where it did not change the label of clamp(x + r). Uses :meth:`UAP.deepfool` (paper settings: top 10
    classes, overshoot 0.02, at most 10 iterations); r is returned with the overshoot, as the UAP loop adds it."""
    device = pixels.device
    labels = predict_labels(model, pixels, None, "fp32")
    params = UAPParams()
    params.num_candidates = min(params.num_candidates, model.spec.num_classes)
    setup = AttackSetup(model, pixels[:1], labels[:1], 1.0, "l2", None, torch.Generator(), "fp32")
    deepfool = UAP(setup, params).deepfool
    zero = torch.zeros(pixels.shape[1:], device=device)
    for i in range(len(pixels)):
        x = pixels[i:i + 1].float() / 255
        r, _iterations, label = deepfool(x, zero)
        r = r[0].detach()
        if r.abs().max() == 0:
            yield None
            continue
        with torch.inference_mode():
            moved = int(model((x + r).clamp(0, 1).contiguous(memory_format=torch.channels_last)).argmax())
        yield r if moved != label else None


def top_singular(matrix: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All singular values (n,) float64 of a (d, n) matrix, largest first, and its first ``k`` left singular
    vectors U_k (d, k) float64, through the eigen-decomposition of the n × n Gram matrix (U_k = M V_k / σ_k): memory
    n² + d·k beside the matrix, not a d × n copy (d = 150528 for ImageNet). Columns with σ ≈ 0 are zero."""
    gram = (matrix.T @ matrix).double()
    eigenvalues, vectors = torch.linalg.eigh(gram)
    order = eigenvalues.argsort(descending=True)
    sigma = eigenvalues[order].clamp_min(0).sqrt()
    top, top_vectors = sigma[:k], vectors[:, order[:k]]
    keep = top > sigma[0] * 1e-7
    basis = (matrix @ top_vectors.to(matrix.dtype)).double() / torch.where(keep, top, torch.ones_like(top))
    basis[:, ~keep] = 0
    return sigma, basis


def random_unit_spectrum(dimension: int, count: int, generator: torch.Generator, rows: int = 8192) -> torch.Tensor:
    """Singular values (count,) float64, largest first, of ``count`` random unit vectors in R^dimension (Gaussian
    columns, normalised: uniform on the sphere), from their Gram matrix accumulated over blocks of ``rows``
    coordinates (memory rows·count, not dimension·count)."""
    gram = torch.zeros(count, count, dtype=torch.float64)
    for start in range(0, dimension, rows):
        block = torch.randn(min(rows, dimension - start), count, generator=generator, dtype=torch.float64)
        gram += block.T @ block
    norms = gram.diagonal().sqrt()
    gram = gram / norms[:, None] / norms[None, :]
    return torch.linalg.eigvalsh(gram).flip(0).clamp_min(0).sqrt()
