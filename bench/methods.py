"""Every method of the registry on the same images at the same cost: the README's method table.

Each method runs with its paper defaults on the same fit / held-out split, eps and seed, until it has spent the same
budget of image-gradients (forward + input-gradient backward passes over single images; RunConfig.max_image_gradients),
and is measured on the held-out images against random ±eps noise on the same images. Data-free methods never see
the fit images; their budget counts the passes over δ and their artificial prior images.

    python bench/methods.py                                   # CIFAR-10 ResNet-20 from ../shared, 8/255, 20k each
    python bench/methods.py --markdown bench/methods.md --seeds 0 1
    python bench/methods.py --methods gd_uap --eval-every 2000     # also the held-out curve of each run
    python bench/methods.py --model efficientnet_lite0 --images /data/imagenet-val --eps 10/255 --fit 1000 \\
        --holdout 1000 --budget 100000 --device cuda

Prints one row per method as it finishes, then the Markdown table (mean over the seeds where several are given).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

if importlib.util.find_spec("uap_core") is None:  # python bench/methods.py … runs the installed package
    sys.exit("bench/methods.py needs the uap_core package installed: `pip install -e .` in the repository root "
             "(`pip install -r requirements-dev.txt` does it)")

from uap_core.algorithms import ALGORITHMS
from uap_core.images import load_images
from uap_core.models import load_model, resolve_device
from uap_core.params import describe
from uap_core.run import Run, RunConfig

SHARED = Path(os.environ.get("UAP_SHARED_DIR") or Path(__file__).resolve().parent.parent.parent / "shared")


def defaults(name: str) -> str:
    """The method's paper defaults, compactly ("B 250, m 10, K 4, …")."""
    shown = []
    for field in describe(ALGORITHMS[name].Params):
        value = field["default"]
        if value is None or field["choices"]:
            continue
        shown.append(f"{field['name']} {value:.3g}" if isinstance(value, float) else f"{field['name']} {value}")
    return ", ".join(shown)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cifar_resnet20")
    parser.add_argument("--images", default=str(SHARED / "data" / "cifar10-test-2000.npz"))
    parser.add_argument("--eps", default="8/255")
    parser.add_argument("--fit", type=int, default=1000)
    parser.add_argument("--holdout", type=int, default=1000)
    parser.add_argument("--budget", type=int, default=20_000, help="image-gradients per method")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--methods", nargs="+", default=list(ALGORITHMS), choices=list(ALGORITHMS))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table to this file")
    parser.add_argument("--eval-every", type=int, default=None,
                        help="also measure the held-out fooling ratio every this many steps and print the curve")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    model = load_model(args.model, device)
    spec = model.spec
    images = load_images(args.images, spec.input_size, spec.resize_size, list(spec.class_names))
    base = RunConfig(model=args.model, eps=args.eps, images=args.images, fit=args.fit, holdout=args.holdout,
                     device=str(device), max_image_gradients=args.budget, keep="last",
                     eval_every=args.eval_every or 1_000_000)
    rows = []
    for name in args.methods:
        results = []
        for seed in args.seeds:
            started = time.perf_counter()
            result = Run(dataclasses.replace(base, algorithm=name, seed=seed), model=model, images=images).run_to_end()
            results.append((result, time.perf_counter() - started))
            print(f"{name:<8} seed {seed}: held-out fooling ratio {result.evaluation.fooling_ratio:.3f} "
                  f"(random {result.random_evaluation.fooling_ratio:.3f}), {result.steps} steps, "
                  f"{result.info['image_gradients']} image-gradients, {results[-1][1]:.0f} s, {result.reason}",
                  flush=True)
            if args.eval_every:
                curve = [f"{h['step']}: {h['fooling_ratio']:.3f}" for h in result.history if h["kind"] == "eval"]
                last = [h for h in result.history if h["kind"] == "step"][-1]
                print(f"         held-out curve (step: fooling ratio) {', '.join(curve)}; last δ: L∞ "
                      f"{result.delta.abs().max().item() * 255:.2f}/255, times halved {last.get('rescales', 0)}",
                      flush=True)
        cls = ALGORITHMS[name]
        rows.append({
            "method": name, "family": cls.family, "paper": cls.paper, "defaults": defaults(name),
            "differs": cls.differs,
            "fooling_ratio": statistics.mean(r.evaluation.fooling_ratio for r, _ in results),
            "random": statistics.mean(r.random_evaluation.fooling_ratio for r, _ in results),
            "steps": statistics.mean(r.steps for r, _ in results),
            "seconds": statistics.mean(s for _, s in results),
        })
    heading = (f"{spec.title}, {args.fit} fit / {args.holdout} held-out images of {Path(args.images).name}, eps "
               f"{args.eps} L∞, {args.budget:,} image-gradients per method, seed(s) "
               f"{' '.join(map(str, args.seeds))}, {device}; held-out fooling ratio against random ±eps noise")
    lines = [heading, "", "| method | family | paper | defaults | held-out FR | random noise | steps | s | differs from "
             "the paper / official code |", "|---|---|---|---|---:|---:|---:|---:|---|"]
    for r in sorted(rows, key=lambda r: -r["fooling_ratio"]):
        lines.append(f"| `{r['method']}` | {r['family']} | {r['paper']} | {r['defaults']} | {r['fooling_ratio']:.3f} | "
                     f"{r['random']:.3f} | {r['steps']:.0f} | {r['seconds']:.0f} | {r['differs']} |")
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    if args.markdown:
        args.markdown.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
