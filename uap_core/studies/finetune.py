"""Fine-tuning with universal perturbations as a defence (Moosavi-Dezfooli, Fawzi, Fawzi, Frossard, "Universal
adversarial perturbations", CVPR 2017, Sec. 3, "Fine-tuning with universal perturbations").

The paper's protocol (VGG-F, ImageNet): pre-compute a pool of 10 universal perturbations for the network; fine-tune
it for 5 extra epochs on a modified training set in which each training image gets a perturbation drawn at random
from the pool with probability 0.5 and stays clean otherwise; then compute a **new** universal perturbation for the
fine-tuned network (their Algorithm 1, L∞ ξ = 10) and report its fooling ratio on the validation set: 93.7 % →
76.2 %. Repeating the procedure (a new pool for the fine-tuned network, 5 more epochs) gave 80.0 %: more rounds did
not improve on the first. The fine-tuned network "remains largely vulnerable to small universal perturbations".

What this study does, the same at CIFAR-10 scale (defaults):

- the CIFAR-10 test images (``cifar10-test``) are split, seeded and disjoint, into ``train`` (1,000: the
  fine-tuning set and the pools' fit images), ``fit`` (500: the images every attack UAP is fitted on) and
  ``holdout`` (500: every fooling ratio and clean accuracy is measured here);
- round 0: the original model; an attack UAP is fitted on ``fit`` with ``method`` through :class:`Run`;
- each round r ≥ 1: a pool of ``pool`` UAPs is fitted for the current model, each on ``pool_fit`` images drawn
  (by its own seed) from ``train``; the model is fine-tuned ``epochs`` epochs on ``train`` where each image of
  every batch carries a pool member (drawn uniformly) with probability ``perturbed_share`` (clamp(x + δ, 0, 1)),
  cross-entropy against the true labels (the clean prediction of the original model where a label is unknown),
  SGD with momentum 0.9, weight decay 5e-4, constant ``lr``; then a **new** attack UAP is fitted on ``fit`` for the
  fine-tuned model (same method, same seed, same images as round 0).
- per round: clean accuracy, the new UAP's fooling ratio, the round-0 UAP's fooling ratio against this model
  (did the model learn to ignore the old perturbation?), same-norm random noise, the dominant label.

Where we differ: the method defaults to SGA (the paper uses its own Algorithm 1, ``method = uap`` here — slower and,
from 500 CIFAR images, weaker), fitted for 5 epochs rather than SGA's 20 (``uap_epochs``) so that the 23 fits of the
default run stay affordable on a CPU (see the caution below); the fine-tuning set is 1,000 CIFAR-10 *test* images (the model was trained on the
CIFAR-10 training set, which is not shipped), disjoint from the fit and held-out images; BatchNorm statistics stay
frozen (eval mode) during fine-tuning — 1,000 images are too few to re-estimate them, and the paper's VGG-F has no
BatchNorm; the learning rate is ours (the paper gives none).

Fine-tuned weights are written only when ``save_weights`` names a file (never inside the shipped or shared weights
folders), atomically; load them with ``load_model(model, weights=path)`` / ``--weights path``.

Measured (CIFAR-10 ResNet-20, eps 8/255 L∞, the defaults — 1,000 / 500 / 500 images, SGA 5 epochs per UAP, pools
of 10, 2 rounds of 5 epochs at lr 0.001; ``python -m uap_core study finetune``, run through this class on the CPU,
684 s on 2 shared cores):

    round   clean accuracy   new UAP   round-0 UAP   random ±eps noise   dominant label of the new UAP
    0       0.792            0.742     0.742         0.306               frog 0.70
    1       0.816            0.188     0.172         0.158               deer 0.19
    2       0.840            0.116     0.160         0.150               airplane 0.13

The claim holds, more strongly than in the paper (93.7 % → 76.2 %): a UAP fitted for the fine-tuned model with the
same budget fools far fewer held-out images, and the second round helps a little more here (the paper saw none).
Two cautions. (1) The attack budget matters: 5 SGA epochs (10 aggregated sign steps) is just enough for δ to reach
±eps; against the round-1 model the new UAP then barely beats random ±eps noise. With SGA's full 20 epochs (same
images, a separate check with ``Run`` on the round-1 weights) the new UAP fools 0.368 of the held-out images
against 0.850 on the original model — still a large drop, but half as large as the 5-epoch figure suggests.
(2) Clean accuracy rises because the fine-tuning images are CIFAR-10 test images, the same distribution as the
held-out ones (the model's own training set is not shipped); at lr 0.01 it fell instead (0.808 → 0.720 in the
test's setting), at lr 0.003 it held (0.798). The test's setting (600 fine-tuning images, a pool of 3, 3 epochs,
UAPs of 2 SGA epochs of batch 100): new UAP 0.582 → 0.148, round-0 UAP 0.582 → 0.358, clean 0.808 → 0.832.

Table ``rounds``: one row per round (0 = before fine-tuning).
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator

import torch
import torch.nn.functional as F

from ..algorithms import ALGORITHMS
from ..errors import ParameterError
from ..evaluation import evaluate, predict_labels
from ..models import Classifier, find_weights, get_spec, weights_dirs
from ..params import param
from ..run import Run, RunConfig
from ..run_types import NORMS
from .base import CIFAR_TEST_IMAGES, SHARED_DIR, Study, StudyResult
from .dominant_labels import check_model, fit_uap, method_params, random_like

@dataclass
class FinetuneSettings:
    model: str = param("cifar_resnet20", "Model (registry name) to fine-tune.")
    images: str = param(CIFAR_TEST_IMAGES, "Image source with labels: a .npz, a folder or 'cifar10-test' (the "
                                             "CIFAR-10 test set, downloaded once: 170 MB).")
    train: int = param(1000, "Images to fine-tune on (the pools are fitted on them too).", 1, 1_000_000)
    fit: int = param(500, "Images every attack UAP is fitted on (disjoint from train).", 1, 1_000_000)
    holdout: int = param(500, "Held-out images: fooling ratios and clean accuracy.", 1, 1_000_000)
    method: str = param("sga", "Method of every UAP (pool and attack); the paper's is uap.",
                        choices=tuple(ALGORITHMS))
    eps: float = param(8 / 255, "Budget of every UAP in pixel units.", 1e-6, 1000.0)
    norm: str = param("linf", "Norm of the budget.", choices=NORMS)
    uap_epochs: int = param(5, "Epochs of each UAP fit (0: the method's default, SGA's 20; 5 epochs of SGA's "
                               "batch 250 on 500 images are the 10 sign steps δ needs to reach ±eps).", 0, 10_000)
    uap_batch_size: int = param(0, "Batch size of each UAP fit (0: the method's default; SGA: 250).", 0, 100_000)
    pool: int = param(10, "UAPs in the pool of each round (paper: 10).", 1, 1000)
    pool_fit: int = param(500, "Images of the train split each pool UAP is fitted on (drawn per member).", 1,
                          1_000_000)
    rounds: int = param(2, "Fine-tuning rounds (paper: 1, repeated once more without gain).", 1, 100)
    epochs: int = param(5, "Fine-tuning epochs per round (paper: 5).", 1, 10_000)
    perturbed_share: float = param(0.5, "Probability that a training image carries a pool UAP (paper: 0.5).",
                                   0.0, 1.0)
    lr: float = param(0.001, "Learning rate of the fine-tuning (SGD, momentum 0.9, weight decay 5e-4).", 1e-8,
                      10.0)
    train_batch: int = param(128, "Fine-tuning batch size.", 1, 100_000)
    save_weights: str = param("", "Write the last round's fine-tuned weights to this file (empty: not written; "
                                  "never inside a folder the models' weights are read from).")
    seed: int = param(0, "Seed of the split, the fits, the pools and the fine-tuning.", 0, 2**31 - 1)


class Finetune(Study):
    name: ClassVar[str] = "finetune"
    title: ClassVar[str] = "Fine-tuning on universal perturbations"
    summary: ClassVar[str] = ("Fine-tune on images half of which carry pool UAPs, then fit a new UAP: does it fool "
                              "fewer held-out images, and what does clean accuracy pay?")
    paper: ClassVar[str] = ("Moosavi-Dezfooli, Fawzi, Fawzi, Frossard, Universal adversarial perturbations, "
                            "CVPR 2017 (Sec. 3, fine-tuning with universal perturbations)")
    Settings: ClassVar[type] = FinetuneSettings
    table_names: ClassVar[tuple[str, ...]] = ("rounds",)

    def __init__(self, settings: Any = None, device: str = "auto") -> None:
        super().__init__(settings, device)
        s = self.settings
        check_model(s.model)
        if s.norm == "linf" and s.eps > 1:
            raise ParameterError(f"eps = {s.eps:g} is out of range for L∞; allowed (0, 1]")
        if s.train < 2:
            raise ParameterError("train must be at least 2 (pool UAPs need fit and held-out images of their own)")
        self.weights_path = check_weights_path(s.save_weights, s.model) if s.save_weights else None
        self.info: dict[str, Any] = {}
        self.written: Path | None = None
        self._last_run: Run | None = None

    def images_required(self) -> int:
        return self.settings.train + self.settings.fit + self.settings.holdout

    def _run(self) -> Iterator[tuple[float, str]]:
        s = self.settings
        device = self.run_device()
        yield 0.0, "loading the model and images"
        original, images = self.load_model_and_images(s.model, prepare=True)
        self.check_split(images, train=s.train, fit=s.fit, holdout=s.holdout)
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(s.seed))
        train_set = images.subset(order[:s.train])
        attack_set = images.subset(order[s.train:s.train + s.fit + s.holdout])
        pool_fit = min(s.pool_fit, s.train - 1)
        train_pixels = train_set.pixels.to(device)
        train_labels = train_set.labels.clone()
        unknown = train_labels < 0
        if bool(unknown.any()):
            train_labels[unknown] = predict_labels(original, train_pixels[unknown.to(device)], None, "fp32").cpu()
        train_labels = train_labels.to(device)

        units = 1 + s.rounds * (s.pool + 2)  # attack fits, pool fits, fine-tunings
        done = 0

        def fraction(part: float = 0.0) -> float:
            return round(0.01 + 0.98 * (done + part) / units, 9)

        def config(seed: int, fit: int, holdout: int) -> RunConfig:
            return RunConfig(model=s.model, algorithm=s.method, eps=s.eps, norm=s.norm, images=s.images, fit=fit,
                             holdout=holdout, seed=seed, device=str(device), epochs=s.uap_epochs or None,
                             params=method_params(s.method, s.uap_batch_size), eval_every=10**8, keep="last",
                             compile="off", precision="fp32")

        current: Classifier = original
        first_delta: torch.Tensor | None = None
        previous_delta: torch.Tensor | None = None
        pool_ratios: list[float] = []
        train_loss = math.nan
        for round_index in range(s.rounds + 1):
            if round_index > 0:
                pool, pool_ratios = [], []
                for j in range(s.pool):
                    yield from fit_uap(self, config(s.seed + 1000 * round_index + j + 1, pool_fit, s.train - pool_fit),
                                       current, train_set, fraction(), 0.98 / units,
                                       f"round {round_index}: pool UAP {j + 1}/{s.pool}")
                    if not self._finished():
                        return
                    pool.append(self._last_run.result.delta.to(device))
                    pool_ratios.append(self._last_run.result.evaluation.fooling_ratio)
                    done += 1
                yield fraction(), f"round {round_index}: fine-tuning {s.epochs} epochs"
                generator = torch.Generator().manual_seed(s.seed * 7919 + round_index)
                current, train_loss = fine_tune(current, train_pixels, train_labels, torch.stack(pool), s.epochs,
                                                s.train_batch, s.lr, s.perturbed_share, generator)
                done += 1
            yield from fit_uap(self, config(s.seed, s.fit, s.holdout), current, attack_set, fraction(), 0.98 / units,
                               f"round {round_index}: attack UAP")
            if not self._finished():
                return
            run = self._last_run
            done += 1
            delta = run.result.delta.to(device)
            holdout_pixels, holdout_labels = run.holdout_pixels, run.holdout_set.labels
            new = run.result.evaluation
            noise = random_like(delta, s.norm, torch.Generator().manual_seed(s.seed + 11))
            noise_eval = evaluate(current, holdout_pixels, noise, holdout_labels, precision="fp32")
            first_eval = evaluate(current, holdout_pixels, first_delta, holdout_labels, precision="fp32") \
                if first_delta is not None else new
            previous_eval = evaluate(current, holdout_pixels, previous_delta, holdout_labels, precision="fp32") \
                if previous_delta is not None else new
            dominant = new.histogram.dominant
            self.tables["rounds"].append({
                "round": round_index, "clean_accuracy": new.clean_accuracy,
                "fooling_ratio_new_uap": new.fooling_ratio, "fooling_ratio_round0_uap": first_eval.fooling_ratio,
                "fooling_ratio_previous_uap": previous_eval.fooling_ratio,
                "random_fooling_ratio": noise_eval.fooling_ratio,
                "attacked_accuracy_new_uap": new.attacked_accuracy,
                "fooling_rate_new_uap": new.fooling_rate,  # 1 − attacked accuracy (the SGA evaluation's number)
                "dominant_name": dominant.name if dominant else None,
                "dominant_share": dominant.share if dominant else 0.0,
                "pool_size": s.pool if round_index else 0,
                "pool_fooling_ratio": sum(pool_ratios) / len(pool_ratios) if round_index and pool_ratios else None,
                "train_loss": None if round_index == 0 else train_loss,
                "heldout_images": new.count,
            })
            if first_delta is None:
                first_delta = delta
            previous_delta = delta
            yield fraction(), f"round {round_index}: fooling ratio {new.fooling_ratio:.3f}, clean accuracy " \
                              f"{new.clean_accuracy}"
        if self.weights_path is not None and current is not original:
            self.written = save_weights(current, self.weights_path, s.model)
            self.info["weights_written"] = str(self.written)
        self.info.update(train_images=s.train, fit_images=s.fit, heldout_images=s.holdout, pool_fit=pool_fit)

    def _finished(self) -> bool:
        return self._last_run is not None and self._last_run.result is not None and not self.stopping

    def finish(self) -> None:
        rows = self.tables["rounds"]
        summary: dict[str, Any] = dict(self.info)
        summary.setdefault("weights_written", None)
        if rows:
            first, last = rows[0], rows[-1]
            summary.update(
                rounds_done=len(rows) - 1,
                fooling_ratio_before=first["fooling_ratio_new_uap"], fooling_ratio_after=last["fooling_ratio_new_uap"],
                clean_accuracy_before=first["clean_accuracy"], clean_accuracy_after=last["clean_accuracy"],
                round0_uap_after=last["fooling_ratio_round0_uap"],
                best_round=min(rows, key=lambda r: r["fooling_ratio_new_uap"])["round"],
                random_before=first["random_fooling_ratio"], random_after=last["random_fooling_ratio"])
            if len(rows) > 1:
                summary["fooling_ratio_after_round1"] = rows[1]["fooling_ratio_new_uap"]
        self.summary_values = summary

    @staticmethod
    def figure(result: StudyResult):
        """Left: fooling ratios per round — a new UAP fitted for that round's model, the round-0 UAP against it,
        random noise; right: clean accuracy per round (held-out)."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        rows = result.tables.get("rounds", [])
        x = [r["round"] for r in rows]
        fig = make_subplots(rows=1, cols=2, column_widths=[0.6, 0.4],
                            subplot_titles=("Fooling ratio on held-out images", "Clean accuracy (held-out)"))
        for key, name, style in (("fooling_ratio_new_uap", "new UAP for this round's model", dict(color="#d62728")),
                                 ("fooling_ratio_round0_uap", "round-0 UAP", dict(color="#ff7f0e", dash="dash")),
                                 ("random_fooling_ratio", "same-norm random noise", dict(color="#7f7f7f", dash="dot"))):
            fig.add_trace(go.Scatter(x=x, y=[r[key] for r in rows], mode="lines+markers", name=name, line=style),
                          row=1, col=1)
        fig.add_trace(go.Scatter(x=x, y=[r["clean_accuracy"] for r in rows], mode="lines+markers",
                                 name="clean accuracy", line=dict(color="#2ca02c")), row=1, col=2)
        fig.update_xaxes(title_text="fine-tuning round (0 = original)", dtick=1)
        fig.update_yaxes(rangemode="tozero", row=1, col=1)
        fig.update_layout(height=480, legend=dict(orientation="h", y=-0.2), title=result.title)
        return fig


def fine_tune(model: Classifier, pixels: torch.Tensor, labels: torch.Tensor, pool: torch.Tensor, epochs: int,
              batch_size: int, lr: float, perturbed_share: float,
              generator: torch.Generator) -> tuple[Classifier, float]:
    """A fine-tuned copy of ``model`` (the original is untouched) and its mean training loss of the last epoch.

    pixels: (N, 3, H, W) uint8 training images on the model's device; labels: (N,) int64; pool: (P, 3, H, W) UAPs in
    pixel units. Each image of a batch carries a pool member drawn uniformly with probability ``perturbed_share``
    (clamp(x + δ, 0, 1)). Cross-entropy, SGD (momentum 0.9, weight decay 5e-4, constant ``lr``); BatchNorm statistics
    frozen (eval mode). ``generator`` (CPU) draws the batches, the perturbed images and the pool members."""
    device = pixels.device
    network = copy.deepcopy(model.network)
    trainable = Classifier(network, model.spec).to(device)  # eval mode: BatchNorm statistics stay frozen
    network.requires_grad_(True)
    optimiser = torch.optim.SGD(network.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    last_loss = math.nan
    for _ in range(epochs):
        losses = []
        for batch in torch.randperm(len(pixels), generator=generator).split(batch_size):
            carry = torch.rand(len(batch), generator=generator) < perturbed_share
            member = torch.randint(0, len(pool), (len(batch),), generator=generator)
            batch, carry, member = batch.to(device), carry.to(device), member.to(device)
            x = pixels[batch].float() / 255
            x = torch.where(carry[:, None, None, None], (x + pool[member]).clamp(0, 1), x)
            loss = F.cross_entropy(trainable(x.contiguous(memory_format=torch.channels_last)), labels[batch])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        last_loss = sum(losses) / len(losses)
    network.requires_grad_(False)
    trainable.eval()
    return trainable, last_loss


def protected_folders(model_name: str) -> list[Path]:
    """Folders fine-tuned weights must never be written into: every weights folder searched by
    :func:`uap_core.models.weights_dirs`, the shared test-data folder, and the folder of the model's own weights."""
    folders = [*weights_dirs(), SHARED_DIR]
    spec = get_spec(model_name)
    if spec.weights_file:
        original = find_weights(spec)
        if original is not None:
            folders.append(original.parent)
    return [f.expanduser().resolve() for f in folders]


def check_weights_path(value: str, model_name: str) -> Path:
    """The resolved file path for fine-tuned weights; ParameterError when it is a folder or lies in (or is) a
    protected weights location (see :func:`protected_folders`)."""
    path = Path(value).expanduser().resolve()
    if path.is_dir():
        raise ParameterError(f"save_weights {value!r} is a folder; name a file such as finetuned.pt")
    for folder in protected_folders(model_name):
        if path == folder or path.is_relative_to(folder):
            raise ParameterError(f"save_weights {value!r} lies in {folder}, a shipped or shared weights folder; "
                                 "write fine-tuned weights elsewhere")
    return path


def save_weights(model: Classifier, path: Path, model_name: str) -> Path:
    """Write the network's state dict (CPU tensors) to ``path`` atomically (temporary file in the same folder,
    fsync, rename), after checking the path again. Returns the path."""
    path = check_weights_path(str(path), model_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.network.state_dict().items()}
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    return path
