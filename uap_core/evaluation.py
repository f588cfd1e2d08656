"""Forward-only evaluation of a perturbation: predictions, fooling ratio, accuracy, dominant labels.

Everything here runs without gradients (torch.inference_mode), in batches sized for the device (see
:func:`default_batch_size`), backing off on out-of-memory.

The images are either in memory — (N, 3, H, W) uint8 pixels — or an :class:`~uap_core.images.ImageStream`
decoded batch by batch in DataLoader worker processes (:func:`predict_many`), so that memory stays flat however
many images there are. With ``across_ranks=True`` in a multi-process run (torchrun), each rank evaluates whole
batches of its own (:func:`uap_core.distributed.batch_block`) and the per-image labels are gathered back in
order on every rank; each forward pass then sees exactly the images it sees in one process, so the counts and
histograms are the same as one process's.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
from dataclasses import dataclass, field
from functools import lru_cache

import torch

from typing import Iterator, Sequence

from . import distributed, metrics
from .images import ImageStream, stream_batches
from .models import Classifier


def autocast(device: torch.device, precision: str):
    """The autocast context for a precision: "fp32" (none), "bf16" or "fp16" (model math only)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


CPU_BATCH_PIXELS = 4 * 224 * 224  # pixels per CPU forward: cache-sized batches beat big ones (see below)
CUDA_MEMORY_SHARE = 0.5  # share of the GPU's free memory a forward-only batch may take
MAX_BATCH = 1024
_cuda_batch_cache: dict[tuple, int] = {}


def batch_for_memory(free_bytes: int, bytes_per_image: float, share: float = CUDA_MEMORY_SHARE,
                     largest: int = MAX_BATCH) -> int:
    """Images per batch that fit in ``share`` of ``free_bytes`` at ``bytes_per_image``; 1 ≤ result ≤ largest."""
    return int(max(1, min(largest, share * free_bytes // max(bytes_per_image, 1.0))))


def default_batch_size(model: Classifier, image_shape: tuple[int, ...], precision: str = "fp32") -> int:
    """The forward-only batch for ``model`` on (3, H, W) images.

    CPU: about four 224-pixel images' worth (measured on 2 cores, EfficientNet-Lite0: 32–42 images/s at batch 4,
    27–33 at 8, 24 at 32 — bigger batches fall out of the caches; ResNet50 is flat). CUDA: from the free memory,
    after two probe forwards (4 and 12 images) measure the memory an image takes (cached per model, shape, precision).
    """
    height, width = image_shape[-2:]
    if model.device.type != "cuda":
        return max(1, min(256, CPU_BATCH_PIXELS // (height * width)))
    key = (id(model), tuple(image_shape), precision)
    if key not in _cuda_batch_cache:
        _cuda_batch_cache[key] = _probe_cuda_batch_size(model, tuple(image_shape), precision)
    return _cuda_batch_cache[key]


def _probe_cuda_batch_size(model: Classifier, image_shape: tuple[int, ...], precision: str) -> int:
    """Peak memory of forwards of 4 and of 12 images; the slope is the memory an image takes (without the fixed
    part: weights cast to half precision, workspaces)."""
    device = model.device

    def peak_bytes(count: int) -> int:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        with torch.inference_mode(), autocast(device, precision):
            x = torch.zeros((count, *image_shape), device=device).contiguous(memory_format=torch.channels_last)
            model(x)
        return torch.cuda.max_memory_allocated(device) - before

    try:
        small, large = peak_bytes(4), peak_bytes(12)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return 1
    per_image = max((large - small) / 8, large / 12 / 4)  # a floor, should the slope come out near zero
    free, _total = torch.cuda.mem_get_info(device)
    return batch_for_memory(free, per_image)


def predict_logits(model: Classifier, pixels: torch.Tensor, delta: torch.Tensor | None = None,
                   precision: str = "fp32", batch_size: int | None = None) -> torch.Tensor:
    """Logits (N, C) fp32 of clamp(pixels / 255 + δ, 0, 1), on the model's device.

    pixels: (N, 3, H, W) uint8 (any device); delta: (3, H, W) pixel units or None for the clean images.
    Halves the batch on CUDA out-of-memory and goes on.
    """
    device = model.device
    batch = batch_size or default_batch_size(model, tuple(pixels.shape[1:]), precision)
    outputs, start = [], 0
    with torch.inference_mode():
        while start < len(pixels):
            chunk = pixels[start:start + batch].to(device, non_blocking=True)
            try:
                outputs.append(_logits(model, chunk, delta, precision))
            except torch.OutOfMemoryError:
                if batch == 1:
                    raise
                batch = max(1, batch // 2)
                torch.cuda.empty_cache()
                if batch_size is None:  # later calls start from the size that fitted
                    _cuda_batch_cache[(id(model), tuple(pixels.shape[1:]), precision)] = batch
                continue
            start += len(chunk)
    return torch.cat(outputs) if outputs else torch.empty((0, model.spec.num_classes), device=device)


def _logits(model: Classifier, chunk: torch.Tensor, delta: torch.Tensor | None, precision: str) -> torch.Tensor:
    """Logits (n, C) fp32 of clamp(chunk / 255 + δ, 0, 1) for a uint8 chunk already on the model's device."""
    device = model.device
    x = chunk.float().div_(255)
    if delta is not None:
        x = (x + delta.to(device)).clamp_(0, 1)
    with autocast(device, precision):
        return model(x.contiguous(memory_format=torch.channels_last)).float()


def predict_labels(model: Classifier, pixels: torch.Tensor, delta: torch.Tensor | None = None,
                   precision: str = "fp32", batch_size: int | None = None) -> torch.Tensor:
    """Top-1 labels (N,) int64 on the model's device; see :func:`predict_logits`."""
    return predict_logits(model, pixels, delta, precision, batch_size).argmax(1)


def predict_top1(model: Classifier, pixels: torch.Tensor | ImageStream, delta: torch.Tensor | None = None,
                 precision: str = "fp32", batch_size: int | None = None, *, across_ranks: bool = False,
                 workers: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-1 labels (N,) int64 and their softmax probabilities (N,) float32, on the model's device.

    A stream, or ``across_ranks`` in a multi-process run, goes through :func:`predict_many` (the result is then
    on the CPU, and a stream's undecodable images are left out)."""
    if isinstance(pixels, ImageStream) or (across_ranks and distributed.is_active()):
        found = predict_many(model, pixels, [delta], precision, batch_size, across_ranks=across_ranks, workers=workers)
        return found.labels[0], found.confidence[0]
    confidence, labels = predict_logits(model, pixels, delta, precision, batch_size).softmax(1).max(1)
    return labels, confidence


@dataclass
class Predictions:
    """Several perturbations on the same images, image by image, in the images' order (CPU tensors).

    labels[k], confidence[k]: (N,) top-1 label and its softmax probability under ``deltas[k]`` (as
    :func:`predict_top1`); argmax[k]: (N,) the logits' argmax (as :func:`predict_labels`). truth: (N,) ground
    truth, -1 where unknown. valid: (M,) bool over the M images asked for — False where a streamed file could not
    be decoded (those are left out of the N rows).
    """

    labels: list[torch.Tensor]
    confidence: list[torch.Tensor]
    argmax: list[torch.Tensor]
    truth: torch.Tensor
    valid: torch.Tensor

    @property
    def count(self) -> int:
        return int(self.truth.shape[0])


def _batches(images: torch.Tensor | ImageStream, block: range, batch: int, device: torch.device,
             workers: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(pixels (b, 3, H, W) uint8, truth (b,), ok (b,)) over ``images[block]`` in batches of ``batch``."""
    if isinstance(images, ImageStream):
        yield from stream_batches(images, block, batch, workers, pin_memory=device.type == "cuda")
        return
    for start in range(block.start, block.stop, batch):
        chunk = images[start:min(start + batch, block.stop)]
        yield chunk, torch.full((len(chunk),), -1, dtype=torch.int64), torch.ones(len(chunk), dtype=torch.bool)


@lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's malloc_trim, or None where the C library has none."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    A long stream of batches allocates and frees the same large buffers over and over; glibc keeps freed chunks
    above its dynamic mmap threshold in fragmented heaps and the resident memory of a streamed evaluation was seen
    to creep from 0.7 to 2.6 GB over 240 images of 320 px, in some runs and not others. Trimming after each batch
    keeps it flat (about a millisecond per call)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _logits_backing_off(model: Classifier, chunk: torch.Tensor, delta: torch.Tensor | None,
                        precision: str) -> torch.Tensor:
    """:func:`_logits`, in halves (recursively) on out-of-memory."""
    try:
        return _logits(model, chunk, delta, precision)
    except torch.OutOfMemoryError:
        if len(chunk) <= 1:
            raise
        torch.cuda.empty_cache()
        half = len(chunk) // 2
        return torch.cat([_logits_backing_off(model, chunk[:half], delta, precision),
                          _logits_backing_off(model, chunk[half:], delta, precision)])


def predict_many(model: Classifier, images: torch.Tensor | ImageStream, deltas: Sequence[torch.Tensor | None],
                 precision: str = "fp32", batch_size: int | None = None, *, across_ranks: bool = True,
                 workers: int | None = None) -> Predictions:
    """Every δ of ``deltas`` (each (3, H, W) pixel units, or None for the clean images) on every image, in one
    pass over the images: each batch is decoded (or read) once and forwarded once per δ.

    images: (N, 3, H, W) uint8 pixels (any device), or an :class:`ImageStream` decoded by ``workers`` DataLoader
    processes (pinned memory on CUDA). The batches are those of :func:`predict_logits` (``batch_size``, default
    :func:`default_batch_size`), so the predictions are the same. across_ranks: in a multi-process run, evaluate
    this rank's whole batches only and gather the results (every rank gets all of them); the ranks agree on the
    smallest batch size first.
    """
    device = model.device
    n = len(images)
    shape = (3, images.size, images.size) if isinstance(images, ImageStream) else tuple(images.shape[1:])
    batch = batch_size or default_batch_size(model, shape, precision)
    sharded = across_ranks and distributed.is_active()
    if sharded:
        batch = distributed.agree_min(batch, "the evaluation batch size")
    block = distributed.batch_block(n, batch) if sharded else range(n)
    moved = [d.to(device) if d is not None else None for d in deltas]
    # results go straight into buffers sized for the block: nothing small is kept per batch (kept per-batch pieces
    # between large transient buffers fragment the heap and make a long stream's memory creep up)
    size = len(block)
    labels = torch.empty((len(deltas), size), dtype=torch.int64)
    confidence = torch.empty((len(deltas), size), dtype=torch.float32)
    argmax = torch.empty((len(deltas), size), dtype=torch.int64)
    truth = torch.empty(size, dtype=torch.int64)
    valid = torch.empty(size, dtype=torch.bool)
    seen = kept = 0
    with torch.inference_mode():
        for pixels, known, ok in _batches(images, block, batch, device, workers):
            valid[seen:seen + len(ok)] = ok
            seen += len(ok)
            if not bool(ok.all()):
                pixels, known = pixels[ok], known[ok]
            rows = slice(kept, kept + len(known))
            truth[rows] = known
            kept += len(known)
            pixels = pixels.to(device, non_blocking=True)
            for k, delta in enumerate(moved):
                logits = _logits_backing_off(model, pixels, delta, precision)
                probability, top = logits.softmax(1).max(1)
                labels[k, rows] = top.cpu()
                confidence[k, rows] = probability.cpu()
                argmax[k, rows] = logits.argmax(1).cpu()
            del pixels, known, ok, logits
            if isinstance(images, ImageStream):
                release_freed_memory()

    def joined(local: torch.Tensor, what: str) -> torch.Tensor:
        return distributed.gather_rows(local, what) if sharded else local

    return Predictions(
        labels=[joined(labels[k, :kept], "all_gather of the labels") for k in range(len(deltas))],
        confidence=[joined(confidence[k, :kept], "all_gather of the probabilities") for k in range(len(deltas))],
        argmax=[joined(argmax[k, :kept], "all_gather of the labels") for k in range(len(deltas))],
        truth=joined(truth[:kept], "all_gather of the true labels"),
        valid=joined(valid[:seen], "all_gather of the decodable images"))


@dataclass
class Evaluation:
    """A perturbation measured on a set of images (held-out unless said otherwise)."""

    count: int
    fooling_ratio: float
    clean_accuracy: float | None
    attacked_accuracy: float | None
    target_success: float | None
    histogram: metrics.LabelHistogram  # over all perturbed images
    histogram_fooled: metrics.LabelHistogram  # over the fooled images only
    clean_labels: torch.Tensor = field(repr=False)  # (N,) CPU
    perturbed_labels: torch.Tensor = field(repr=False)  # (N,) CPU
    clean_confidence: torch.Tensor | None = field(default=None, repr=False)  # (N,) CPU softmax of the top-1
    perturbed_confidence: torch.Tensor | None = field(default=None, repr=False)  # (N,) CPU, where known
    labelled: int = 0  # images whose true label is known (the accuracies and the fooling rate are over these)

    @property
    def fooling_rate(self) -> float | None:
        """1 − top-1 accuracy under δ against the true labels, over the labelled images — the SGA (and DM-UAP)
        official evaluation's "fooling rate" (``1 - sum(outputs == labels) / len(labels)``), beside its "fooling
        ratio" (label changed against the clean prediction, :attr:`fooling_ratio`). It also counts the images the
        model already got wrong. None when no true label is known (see :attr:`fooling_rate_reason`)."""
        return None if self.attacked_accuracy is None else 1.0 - self.attacked_accuracy

    @property
    def fooling_rate_reason(self) -> str | None:
        """Why there is no fooling rate (None when there is one)."""
        if self.attacked_accuracy is not None:
            return None
        return "no true labels for these images (the fooling rate needs them; the fooling ratio does not)"

    def fooling_rate_fields(self) -> dict:
        """{"fooling_rate": 1 − accuracy under δ, "labelled_images": how many it is over}, or, without true
        labels, {"fooling_rate": None, "fooling_rate_reason": why}: the keys the CLI's --json and the summaries
        add beside the fooling ratio."""
        if self.fooling_rate is None:
            return {"fooling_rate": None, "fooling_rate_reason": self.fooling_rate_reason}
        return {"fooling_rate": self.fooling_rate, "labelled_images": self.labelled}

    def as_dict(self, top: int = 20) -> dict:
        dominant = self.histogram.dominant
        return {
            "count": self.count, "fooling_ratio": self.fooling_ratio, "clean_accuracy": self.clean_accuracy,
            "attacked_accuracy": self.attacked_accuracy, "target_success": self.target_success,
            "dominant_label": dominant.label if dominant else None,
            "dominant_name": dominant.name if dominant else None,
            "dominant_share": dominant.share if dominant else 0.0,
            "histogram": self.histogram.as_dict(top), "histogram_fooled": self.histogram_fooled.as_dict(top),
        }


def evaluate(model: Classifier, pixels: torch.Tensor | ImageStream, delta: torch.Tensor | None,
             labels: torch.Tensor | None = None, clean_labels: torch.Tensor | None = None, target: int | None = None,
             precision: str = "fp32", batch_size: int | None = None, clean_confidence: torch.Tensor | None = None,
             *, across_ranks: bool = False, workers: int | None = None) -> Evaluation:
    """Fooling ratio, accuracies and dominant-label histograms of δ on ``pixels`` (N, 3, H, W) uint8.

    labels: ground truth (N,) with -1 where unknown (accuracies only where known). clean_labels (and
    clean_confidence): k(x) and its probability if already computed (saves a forward pass). target: report the
    share predicted as the target class too. The top-1 probabilities come along at no cost.
    pixels may be an :class:`ImageStream` (streamed through ``workers`` DataLoader processes; its own labels are
    used, and undecodable files are left out — ``clean_labels`` must then come from the same stream), and
    ``across_ranks`` shares the work among the ranks of a multi-process run (see :func:`predict_many`).
    """
    streamed = isinstance(pixels, ImageStream)
    if streamed or (across_ranks and distributed.is_active()):
        deltas = [delta] if clean_labels is not None else [None, delta]
        found = predict_many(model, pixels, deltas, precision, batch_size, across_ranks=across_ranks, workers=workers)
        if clean_labels is None:
            clean_labels, clean_confidence = found.labels[0], found.confidence[0]
        return summarise(clean_labels, found.labels[-1], found.truth if streamed else labels, model.spec.class_names,
                         target, clean_confidence, found.confidence[-1])
    if clean_labels is None:
        clean_labels, clean_confidence = predict_top1(model, pixels, None, precision, batch_size)
    perturbed, perturbed_confidence = predict_top1(model, pixels, delta, precision, batch_size)
    return summarise(clean_labels, perturbed, labels, model.spec.class_names, target, clean_confidence,
                     perturbed_confidence)


def summarise(clean_labels: torch.Tensor, perturbed_labels: torch.Tensor, labels: torch.Tensor | None,
              class_names: tuple[str, ...] | list[str], target: int | None = None,
              clean_confidence: torch.Tensor | None = None,
              perturbed_confidence: torch.Tensor | None = None) -> Evaluation:
    """The :class:`Evaluation` of already-predicted top-1 labels (N,) clean and perturbed (and, where known,
    their probabilities (N,)); labels as above."""
    clean_labels, perturbed = clean_labels.cpu(), perturbed_labels.cpu()
    truth = labels.cpu() if labels is not None else torch.full_like(clean_labels, -1)
    return Evaluation(
        count=len(clean_labels),
        fooling_ratio=metrics.fooling_ratio(clean_labels, perturbed),
        clean_accuracy=metrics.accuracy(clean_labels, truth),
        attacked_accuracy=metrics.accuracy(perturbed, truth),
        target_success=(perturbed == target).float().mean().item() if target is not None else None,
        histogram=metrics.dominant_labels(perturbed, class_names),
        histogram_fooled=metrics.dominant_labels(perturbed, class_names, clean_labels),
        clean_labels=clean_labels, perturbed_labels=perturbed,
        clean_confidence=clean_confidence.float().cpu() if clean_confidence is not None else None,
        perturbed_confidence=perturbed_confidence.float().cpu() if perturbed_confidence is not None else None,
        labelled=int((truth >= 0).sum()),
    )
