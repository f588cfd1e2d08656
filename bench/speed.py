"""How fast is the attack core, next to the floor and to the usual way of writing it — measured side by side.

For each model and each part:

  sga_inner   SGA's inner step (mini-batch m, default 10): the core's ``SGA.step`` on an outer batch, counted in
              image-gradients per second (K·B/m inner steps of m images each, plus the one outer update);
  sgd_step    SGD-UAP's step on a batch of B images (default 250): the core's ``SGDUAP.step``;
  evaluation  forward-only prediction of clamp(x + δ) on many images: the core's ``predict_labels``.

Four columns per part, images per second, all measured in this one process on the same device:

  core      uap_core's eager path (frozen weights; channels_last; on CUDA cuDNN autotuning and bf16/fp16
            autocast; uint8 images and batch indices on the device; one sync per step);
  compiled  the same with ``compile`` on (RunConfig.compile): the gradient step captured by torch.compile, on
            CUDA in mode "reduce-overhead", i.e. as CUDA graphs — what ``--compile auto`` runs on a GPU
            (SGA and SGD-UAP only; measured after the compile, which is done once per run);
  floor     the least any UAP method must do: forward + input-gradient backward (or forward only for
            evaluation) on an already prepared input of the same batch size and precision, eager;
  baseline  "the usual way": fp32, weights still requiring grad, NCHW, the batch indexed on the host from
            float images and copied to the device every step, loss read back with .item() every step.

and the ratios best/floor and best/baseline, best being the faster of core and compiled. Last, the predicted wall
time of the published SGA run (VGG16, 10,000 images, 20 epochs, K = 4: 800,000 image-gradients at mini-batch 10)
at the best measured sga_inner speed.

Weights are random (speed does not depend on them; nothing is downloaded). Run from the repository root:

    python bench/speed.py                                  # VGG16, ResNet50, EfficientNet-Lite0 (+ ResNet152 on CUDA)
    python bench/speed.py --markdown bench/table.md --profile vgg16   # also a Markdown table, a profile
    python bench/speed.py --device cpu --models efficientnet_lite0 --seconds 5
    python bench/speed.py --models vgg16 mobilenet_v2 --sgd-batch 128
    python bench/speed.py --device cpu --compile on           # measure inductor on the CPU too (slow to compile)
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

if importlib.util.find_spec("uap_core") is None:  # python bench/speed.py … runs the installed package
    sys.exit("bench/speed.py needs the uap_core package installed: `pip install -e .` in the repository root "
             "(`pip install -r requirements-dev.txt` does it)")

from uap_core.algorithms import get_algorithm
from uap_core.algorithms.base import AttackSetup
from uap_core.evaluation import autocast, predict_labels
from uap_core.models import load_model, model_names, resolve_device
from uap_core.params import parse_params
from uap_core.run import choose_compile, choose_precision, prepare_model

PUBLISHED_SGA_IMAGE_GRADIENTS = 10_000 * 20 * 4  # images × epochs × K: every image is visited K times an epoch
EPS = 10 / 255


def measure(work: Callable[[], int], device: torch.device, seconds: float, warmup: int = 1) -> float:
    """Images per second of ``work`` (which returns how many images it processed), after ``warmup`` calls,
    over at least ``seconds`` and at least 2 calls."""
    for _ in range(warmup):
        work()
    sync(device)
    images, calls, start = 0, 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - start < seconds:
        images += work()
        calls += 1
    sync(device)
    return images / (time.perf_counter() - start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------- the core
def core_algorithm(name: str, model, pixels: torch.Tensor, params: dict, precision: str, compile: bool = False):
    """The core's algorithm object on uint8 ``pixels`` already on the device (as Run builds it)."""
    clean = predict_labels(model, pixels, None, precision)
    setup = AttackSetup(model, pixels, clean, EPS, "linf", None, torch.Generator().manual_seed(0),
                        precision, compile)
    algorithm_class = get_algorithm(name)
    return algorithm_class(setup, parse_params(algorithm_class.Params, params))


def core_sga(model, pixels, minibatch: int, outer_batch: int, precision: str,
             compile: bool = False) -> Callable[[], int]:
    sga = core_algorithm("sga", model, pixels, {"batch_size": outer_batch, "minibatch_size": minibatch,
                                                "inner_passes": 4}, precision, compile)
    batch = torch.arange(outer_batch, device=pixels.device)
    return lambda: sga.step(batch)["image_gradients"]


def core_sgd(model, pixels, batch_size: int, precision: str, compile: bool = False) -> Callable[[], int]:
    sgd = core_algorithm("sgd_uap", model, pixels, {"batch_size": batch_size}, precision, compile)
    batch = torch.arange(batch_size, device=pixels.device)
    return lambda: sgd.step(batch)["image_gradients"]


def core_evaluation(model, pixels, precision: str, batch_size: int) -> Callable[[], int]:
    delta = torch.zeros(pixels.shape[1:], device=pixels.device).uniform_(-EPS, EPS)

    def work() -> int:
        predict_labels(model, pixels, delta, precision, batch_size)
        return len(pixels)
    return work


# ---------------------------------------------------------------------------------------------- the floor
def floor_gradient(model, batch_size: int, size: int, precision: str) -> Callable[[], int]:
    """Forward + input-gradient backward of a prepared float batch: the least work one step can do."""
    device = model.device
    x = torch.rand(batch_size, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)

    def work() -> int:
        leaf = x.detach().requires_grad_(True)
        with autocast(device, precision):
            logits = model(leaf)
        torch.autograd.grad(logits.float().sum(), leaf)
        return batch_size
    return work


def floor_forward(model, batch_size: int, size: int, precision: str) -> Callable[[], int]:
    device = model.device
    x = torch.rand(batch_size, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)

    def work() -> int:
        with torch.inference_mode(), autocast(device, precision):
            model(x)
        return batch_size
    return work


# ---------------------------------------------------------------------------------------------- the usual way
def usual_way(model, pixels: torch.Tensor, batch_size: int, size: int) -> Callable[[], int]:
    """fp32, weights requiring grad, NCHW; float images on the host, indexed and copied every step; .item()."""
    device = model.device
    network = copy.deepcopy(model).to(memory_format=torch.contiguous_format).requires_grad_(True)
    host_images = pixels.cpu().float().div(255)
    labels = torch.randint(0, model.spec.num_classes, (len(host_images),))
    delta = torch.zeros(3, size, size, device=device)

    def work() -> int:
        nonlocal delta
        index = torch.randint(0, len(host_images), (batch_size,))
        x, y = host_images[index].to(device), labels[index].to(device)
        delta.requires_grad_(True)
        loss = F.cross_entropy(network((x + delta).clamp(0, 1)), y)
        loss.backward()
        with torch.no_grad():
            delta = (delta + EPS / 10 * delta.grad.sign()).clamp(-EPS, EPS)
        network.zero_grad(set_to_none=True)
        loss.item()
        return batch_size
    return work


def usual_way_forward(model, pixels: torch.Tensor, batch_size: int) -> Callable[[], int]:
    device = model.device
    host_images = pixels.cpu().float().div(255)

    def work() -> int:
        with torch.no_grad():
            for start in range(0, len(host_images), batch_size):
                model(host_images[start:start + batch_size].to(device)).argmax(1).tolist()
        return len(host_images)
    return work


# ---------------------------------------------------------------------------------------------- the profile
def profile_step(name: str, work: Callable[[], int], device: torch.device, calls: int = 3, rows: int = 12) -> str:
    """torch.profiler's table of ``calls`` calls of ``work`` (already warmed up), sorted by device time: where the
    time of one step goes (kernels, launches, copies, syncs)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    work()
    sync(device)
    with profile(activities=activities) as prof:
        for _ in range(calls):
            work()
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return f"--- profile: {name}, {calls} calls\n" + prof.key_averages().table(sort_by=key, row_limit=rows)


# ---------------------------------------------------------------------------------------------- the table
def bench_model(name: str, device: torch.device, args: argparse.Namespace) -> list[dict]:
    model = prepare_model(load_model(name, device, pretrained=False, download=False), device)
    size = model.spec.input_size
    precision = choose_precision(args.precision, device)
    compile = choose_compile(args.compile, device)
    count = max(args.outer_batch, args.sgd_batch, args.eval_images)
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator).to(device)
    rows = []

    def row(part: str, batch: int, core: Callable[[], int], compiled: Callable[[], int] | None,
            floor: Callable[[], int], baseline: Callable[[], int] | None) -> None:
        measured = {"core": measure(core, device, args.seconds),
                    "compiled": measure(compiled, device, args.seconds, warmup=3) if compiled else float("nan"),
                    "floor": measure(floor, device, args.seconds)}
        measured["baseline"] = measure(baseline, device, args.seconds) if baseline else float("nan")
        rows.append({"model": name, "part": part, "batch": batch, **measured})
        print(format_row(rows[-1]), flush=True)

    if "sga_inner" in args.parts:
        eager_sga = core_sga(model, pixels, args.minibatch, args.outer_batch, precision)
        compiled_sga = core_sga(model, pixels, args.minibatch, args.outer_batch, precision, True) if compile else None
        floor_sga = floor_gradient(model, args.minibatch, size, precision)
        row("sga_inner", args.minibatch, eager_sga, compiled_sga, floor_sga,
            usual_way(model, pixels, args.minibatch, size))
        if name in args.profile:
            profiles = [("core sga step, eager", eager_sga), ("floor, 40 forward+backward a call", lambda: sum(floor_sga()
                                                                                            for _ in range(40)))]
            profiles += [("core sga step, compiled", compiled_sga)] if compiled_sga else []
            for title, work in profiles:
                print(profile_step(f"{name} {title}", work, device), flush=True)
    if "sgd_step" in args.parts:
        row("sgd_step", args.sgd_batch, core_sgd(model, pixels, args.sgd_batch, precision),
            core_sgd(model, pixels, args.sgd_batch, precision, True) if compile else None,
            floor_gradient(model, args.sgd_batch, size, precision), usual_way(model, pixels, args.sgd_batch, size))
    if "evaluation" in args.parts:
        evaluation_pixels = pixels[:args.eval_images]
        row("evaluation", args.eval_batch, core_evaluation(model, evaluation_pixels, precision, args.eval_batch), None,
            floor_forward(model, args.eval_batch, size, precision),
            usual_way_forward(model, evaluation_pixels, args.eval_batch))
    del model, pixels
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


HEADER = (f"{'model':<20} {'part':<11} {'batch':>5} {'core img/s':>11} {'compiled':>9} {'floor img/s':>12} "
          f"{'usual img/s':>12} {'best/floor':>10} {'best/usual':>10}")


def best(r: dict) -> float:
    """The faster of the core's eager and compiled paths (compiled is NaN where not measured)."""
    return max(r["core"], r["compiled"]) if r["compiled"] == r["compiled"] else r["core"]


def markdown_table(rows: list[dict], heading: str) -> str:
    """The table as Markdown (for bench/README.md), under a line naming the device and settings."""
    lines = [heading, "", "| model | part | batch | core img/s | compiled | floor img/s | usual img/s | best/floor |"
             " best/usual |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['part']} | {r['batch']} | {r['core']:.1f} | {r['compiled']:.1f} | "
                     f"{r['floor']:.1f} | {r['baseline']:.1f} | {best(r) / r['floor']:.2f} | "
                     f"{best(r) / r['baseline']:.2f} |")
    return "\n".join(lines).replace("| nan |", "| – |") + "\n"


def format_row(r: dict) -> str:
    return (f"{r['model']:<20} {r['part']:<11} {r['batch']:>5} {r['core']:>11.1f} {r['compiled']:>9.1f} "
            f"{r['floor']:>12.1f} {r['baseline']:>12.1f} {best(r) / r['floor']:>10.2f} {best(r) / r['baseline']:>10.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=None,
                        help=f"models of the registry (default: vgg16 resnet50 efficientnet_lite0, and resnet152 on "
                             f"CUDA); any of {', '.join(model_names())}")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default: cuda when present)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="the core's and the floor's precision (auto: bf16 on CUDA, fp32 on the CPU)")
    parser.add_argument("--parts", nargs="+", default=["sga_inner", "sgd_step", "evaluation"],
                        choices=["sga_inner", "sgd_step", "evaluation"])
    parser.add_argument("--minibatch", type=int, default=10, help="SGA's inner mini-batch m (default 10)")
    parser.add_argument("--outer-batch", type=int, default=None,
                        help="SGA's outer batch B for the measured step (default 250 on CUDA, 10 on the CPU)")
    parser.add_argument("--sgd-batch", type=int, default=None,
                        help="SGD-UAP's batch (default 250 on CUDA, 16 on the CPU)")
    parser.add_argument("--eval-batch", type=int, default=None, help="evaluation batch (default 128 on CUDA, 16 on the CPU)")
    parser.add_argument("--eval-images", type=int, default=None, help="images per evaluation (default 1024 on CUDA, 32 on the CPU)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="measure each cell for at least this long (default 3 on CUDA, 4 on the CPU)")
    parser.add_argument("--compile", default="auto", choices=["auto", "on", "off"],
                        help="also measure the compiled step (auto: on CUDA, where it runs as CUDA graphs)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table as Markdown to this file")
    parser.add_argument("--profile", nargs="*", default=[], metavar="MODEL",
                        help="print torch.profiler's table of SGA's step (eager, compiled) and of the floor for these "
                             "models")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    args.outer_batch = args.outer_batch or (250 if gpu else 10)
    args.sgd_batch = args.sgd_batch or (250 if gpu else 16)
    args.eval_batch = args.eval_batch or (128 if gpu else 16)
    args.eval_images = args.eval_images or (1024 if gpu else 32)
    args.seconds = args.seconds if args.seconds is not None else (3.0 if gpu else 4.0)
    args.models = args.models or ["vgg16", "resnet50"] + (["resnet152"] if gpu else []) + ["efficientnet_lite0"]
    if args.threads:
        torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name(device) if gpu else f"CPU ({platform.processor() or platform.machine()}), " \
                                                            f"{torch.get_num_threads()} threads"
    heading = (f"device: {name}; precision {choose_precision(args.precision, device)}; "
               f"compiled column: {'on' if choose_compile(args.compile, device) else 'off'}; torch {torch.__version__}; "
               f"random weights (speed does not depend on them)\n"
               f"sga_inner: B {args.outer_batch}, m {args.minibatch}, K 4; sgd_step: B {args.sgd_batch}; "
               f"evaluation: {args.eval_images} images in batches of {args.eval_batch}; {args.seconds:g} s a cell")
    print(heading + "\n")
    print(HEADER)
    rows = []
    for model_name in args.models:
        rows += bench_model(model_name, device, args)
    print()
    predictions = []
    for r in rows:
        if r["part"] == "sga_inner":
            minutes = PUBLISHED_SGA_IMAGE_GRADIENTS / best(r) / 60
            predictions.append(f"published SGA run (10k images, 20 epochs, K 4, m {r['batch']}) on {r['model']}: "
                               f"{minutes:,.1f} min at {best(r):.0f} image-gradients/s")
    print("\n".join(predictions))
    if args.markdown:
        text = markdown_table(rows, heading.replace("\n", "; ")) + "\n" + "".join(f"- {p}\n" for p in predictions)
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
