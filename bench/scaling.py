"""How generation and evaluation scale with the number of processes (torchrun), and how much of the time the
collectives take.

For R = 1, 2, 4 … ranks (those the machine allows: R ≤ CPU cores on the CPU, R ≤ GPUs on CUDA), this script
launches ``python -m torch.distributed.run --standalone --nproc_per_node R bench/scaling.py --worker …`` and
each launch measures, after a barrier, on rank 0 (the slowest rank's figures where they differ):

  generate      one ``Run`` (the CLI's generate without loading the model and decoding: those are done first):
                the fit images' clean predictions, the steps with their all_reduce, the held-out evaluations;
  evaluate      ``evaluate`` of a δ on the held-out images in memory, the batches shared among the ranks;
  stream        the same images streamed from a folder of PNG files through DataLoader workers (1 per rank).

and reports seconds, speed-up over R = 1 and the share of the time spent inside collectives (timed in
``uap_core.distributed``: on gloo that is the transfer plus the wait for the slowest rank; on CUDA measured
between device synchronisations). R = 1 is launched the same way and is the plain single-process path (torchrun
with one process initialises nothing). On the CPU every configuration gets all the cores: R ranks of
cores/R threads each.

    python bench/scaling.py                                   # CIFAR-10 ResNet-20, SGD-UAP, 1/2/4 ranks on CPU
    python bench/scaling.py --algorithm sga --fit 1000 --batch-size 250
    python bench/scaling.py --device cuda --model resnet50 --images ~/imagenet/val --fit 1000 --holdout 5000
    python bench/scaling.py --markdown bench/scaling.md       # also a Markdown table
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if importlib.util.find_spec("uap_core") is None:  # python bench/scaling.py … runs the installed package
    sys.exit("bench/scaling.py needs the uap_core package installed: `pip install -e .` in the repository root "
             "(`pip install -r requirements-dev.txt` does it)")

DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "cifar10-test-2000.npz"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model", default="cifar_resnet20")
    parser.add_argument("--images", default=str(DEFAULT_IMAGES), help="a .npz, a folder, or 'samples'")
    parser.add_argument("--algorithm", default="sgd_uap", choices=["sgd_uap", "sga"])
    parser.add_argument("--fit", type=int, default=1000)
    parser.add_argument("--holdout", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads per rank (default: the cores shared by the ranks, so every row uses them "
                             "all; 1 compares the ranks' work alone, without intra-op threading)")
    parser.add_argument("--repeat", type=int, default=1, help="measure each part this many times; the best counts")
    parser.add_argument("--markdown", default=None, help="also write the table as Markdown here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------- one launch
def worker(args: argparse.Namespace) -> None:
    import torch

    from uap_core import distributed
    from uap_core.evaluation import evaluate
    from uap_core.images import load_images, open_stream
    from uap_core.models import load_model, resolve_device
    from uap_core.run import Run, RunConfig, prepare_model

    device = resolve_device(args.device)
    distributed.init_from_env(device)
    distributed.set_timing(True)
    device = distributed.local_device(device)
    model = prepare_model(load_model(args.model, device), device)
    spec = model.spec
    images = load_images(args.images, spec.input_size, spec.resize_size, list(spec.class_names))
    config = RunConfig(model=args.model, algorithm=args.algorithm, images=args.images, fit=args.fit,
                       holdout=args.holdout, params={"batch_size": args.batch_size}, epochs=args.epochs,
                       device=str(device), keep="last", eval_every=10**6, seed=0, compile="off")
    figures = {}

    def timed(name: str, work) -> None:
        for _ in range(max(1, args.repeat)):
            distributed.barrier("the start line")
            distributed.reset_stats()
            started = time.perf_counter()
            value = work()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - started
            stats = distributed.collective_stats()
            both = torch.tensor([[seconds, stats["seconds"]]], dtype=torch.float64)
            everyone = distributed.gather_rows(both, "the timings") if distributed.is_active() else both
            slowest = int(everyone[:, 0].argmax())
            if name not in figures or float(everyone[slowest, 0]) < figures[name]["seconds"]:
                figures[name] = {"seconds": float(everyone[slowest, 0]),
                                 "collective_seconds": float(everyone[slowest, 1]),
                                 "collective_seconds_max": float(everyone[:, 1].max()), "calls": stats["calls"],
                                 "value": value}

    runs: list[Run] = []

    def generate() -> int:
        runs.append(Run(config, model=model, images=images))
        return runs[-1].run_to_end().steps

    timed("generate", generate)
    run = runs[-1]
    delta = run.result.delta.to(device)
    held_out = run.holdout_set.pixels.to(device)
    timed("evaluate", lambda: evaluate(model, held_out, delta, across_ranks=True).fooling_ratio)
    if args.folder:
        stream = open_stream(args.folder, spec.input_size, spec.resize_size, list(spec.class_names))
        timed("stream", lambda: evaluate(model, stream, delta, across_ranks=True, workers=1).fooling_ratio)
    if distributed.is_main():
        Path(args.result).write_text(json.dumps(figures))
    distributed.shutdown()


# ---------------------------------------------------------------------------------------------- the driver
def write_folder(images: str, count: int, into: Path) -> Path | None:
    """The first ``count`` images of a .npz as PNG files (what the streamed evaluation reads)."""
    if not images.endswith(".npz"):
        return Path(images) if Path(images).is_dir() else None
    import numpy as np
    from PIL import Image

    with np.load(images) as z:
        for i, picture in enumerate(z["x"][:count]):
            Image.fromarray(picture).save(into / f"{i:05d}.png")
    return into


def launch(args: argparse.Namespace, ranks: int, folder: Path | None, result: Path) -> dict:
    threads = args.threads or (max(1, (os.cpu_count() or 1) // ranks) if args.device == "cpu" else 4)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
               str(Path(__file__).resolve()), "--worker", "--result", str(result), "--device", args.device,
               "--model", args.model, "--images", args.images, "--algorithm", args.algorithm, "--fit", str(args.fit),
               "--holdout", str(args.holdout), "--batch-size", str(args.batch_size), "--epochs", str(args.epochs),
               "--repeat", str(args.repeat)]
    if folder is not None:
        command += ["--folder", str(folder)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{ranks} ranks failed:\n{done.stderr[-3000:]}")
    figures = json.loads(result.read_text())
    figures["launch_seconds"] = time.perf_counter() - started
    figures["threads"] = threads
    return figures


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return
    import torch

    limit = (os.cpu_count() or 1) if args.device == "cpu" else torch.cuda.device_count()
    chosen = [r for r in args.ranks if r <= limit]
    skipped = [r for r in args.ranks if r > limit]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = write_folder(args.images, args.holdout, Path(scratch))
        for ranks in chosen:
            figures = launch(args, ranks, folder, Path(scratch) / f"r{ranks}.json")
            rows.append((ranks, figures))
            print(f"{ranks} rank(s) done: " + ", ".join(f"{k} {v['seconds']:.2f} s" for k, v in figures.items()
                                                        if isinstance(v, dict)), file=sys.stderr)
    base = rows[0][1]
    parts = [p for p in ("generate", "evaluate", "stream") if p in base]
    header = ["ranks", "threads/rank"] + [f"{p} {h}" for p in parts for h in ("s", "speed-up", "comm")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for ranks, figures in rows:
        cells = [str(ranks), str(figures["threads"])]
        for part in parts:
            f = figures[part]
            cells += [f"{f['seconds']:.2f}", f"{base[part]['seconds'] / f['seconds']:.2f}×",
                      f"{f['collective_seconds'] / f['seconds']:.0%}"]
        lines.append("| " + " | ".join(cells) + " |")
    title = (f"{args.model}, {args.algorithm} (batch {args.batch_size}, {args.epochs} epochs, {args.fit} fit images, "
             f"{base['generate']['value']} steps), evaluation of {args.holdout} held-out images; device {args.device}, "
             f"{os.cpu_count()} CPU cores" + (f"; not run: {skipped} ranks (too few "
                                               f"{'cores' if args.device == 'cpu' else 'GPUs'})" if skipped else ""))
    table = "\n".join([title, "", *lines])
    print(table)
    breakdown = {ranks: {p: round(figures[p]["collective_seconds"], 3) for p in parts} for ranks, figures in rows}
    print(f"\nseconds in collectives (slowest rank): {breakdown}")
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")


if __name__ == "__main__":
    main()
