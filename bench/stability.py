"""Which stability measure separates SGA from small-batch SGD-UAP in a laptop-sized race (issue 20, item 3).

The SGA paper's argument: small batches give unstable sign steps (successive updates disagree and cancel),
large batches stable but poorer optima, SGA's aggregated small-batch gradients both stable and best. At laptop
scale the adjacent-step gradient cosine cos(gₜ, gₜ₋₁) sits near 0 for every method; this script measures it
beside the cosine of each update to the running mean of the previous ones (``update_mean_cosine``), how much of
the budget δ uses (``budget_use``: ‖δ‖₂ against the ±eps corner's) and the quantisation error, on CIFAR-10
ResNet-20 at 8/255 L∞ in the paper's protocol (equal epochs: the same images, the same passes), one run per
method and seed, and prints one row per method: the mean over the seeds (± s.d.) of each run's mean over its
steps (budget use: at the last step), the held-out fooling ratio, and the seconds all runs took::

    python bench/stability.py                         # SGD-UAP B 10 vs SGA B 50, m 10, K 4; seeds 0,1,2
    python bench/stability.py --fit 500 --epochs 3 --threads 2

Each run's time is its own (runs one after another); a race runs them side by side on the same cores.

Measured (2026-12-07, this 2-core VM idle; ``python bench/stability.py --side-by-side`` and
``… --fit 300 --holdout 300 --side-by-side``: the six runs started at once, as the app's race starts them), mean ±
s.d. over seeds 0, 1, 2:

| fit / held-out | run | grad_cosine | update_mean_cosine | budget_use | held-out FR | steps |
|---|---|---:|---:|---:|---:|---:|
| 300 / 300 | SGD-UAP B 10 | 0.049 ± 0.014 | 0.133 ± 0.005 | 0.769 ± 0.007 | 0.727 ± 0.044 | 90 |
| 300 / 300 | SGA B 50, m 10, K 4 | 0.155 ± 0.013 | 0.246 ± 0.029 | 0.660 ± 0.019 | 0.610 ± 0.023 | 18 |
| 500 / 500 | SGD-UAP B 10 | 0.047 ± 0.003 | 0.151 ± 0.009 | 0.770 ± 0.008 | 0.752 ± 0.027 | 150 |
| 500 / 500 | SGA B 50, m 10, K 4 | 0.211 ± 0.023 | 0.304 ± 0.013 | 0.796 ± 0.009 | 0.752 ± 0.043 | 30 |

Random noise 0.30. The whole 3-seed race, wall-clock on 2 idle cores: 39 s at 300 images, 77 s at 500. Both
cosines separate the methods on every seed — update_mean_cosine by 0.11 at 300 images (3.9× the larger s.d.) and
0.15 at 500 (11.8×); budget use does not. The charts' default is ``update_mean_cosine`` (``uap_ui.charts.STABILITY_DEFAULT``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

try:
    import torch

    from uap_core.run import Run, RunConfig
    from uap_core.seeds import spread
except ImportError as missing:  # pragma: no cover - a checkout without `pip install -e .`
    sys.exit(f"bench/stability.py needs the uap_core package installed: `pip install -e .` ({missing})")

METHODS = {  # label → (algorithm, params)
    "SGD-UAP B 10": ("sgd_uap", {"batch_size": 10}),
    "SGA B 50, m 10, K 4": ("sga", {"batch_size": 50, "minibatch_size": 10, "inner_passes": 4}),
}
MEASURES = ("grad_cosine", "update_mean_cosine", "quantisation_error")


def run_one(images: str, algorithm: str, params: dict, seed: int, fit: int, holdout: int, epochs: int) -> dict:
    config = RunConfig(model="cifar_resnet20", algorithm=algorithm, eps="8/255", images=images, fit=fit,
                       holdout=holdout, seed=seed, device="cpu", epochs=epochs, keep="last", eval_every=100_000,
                       params=params)
    result = Run(config).run_to_end()
    steps = [e for e in result.history if e["kind"] == "step"]
    row = {key: statistics.fmean(v for e in steps if (v := e.get(key)) == v) for key in MEASURES}
    row.update(budget_use=steps[-1]["budget_use"], fooling_ratio=result.evaluation.fooling_ratio,
               random=result.random_evaluation.fooling_ratio, steps=result.steps, seconds=result.seconds,
               image_gradients=result.info["image_gradients"])
    return row


def main(argv: list[str] | None = None) -> int:
    shared = Path(os.environ.get("UAP_SHARED_DIR") or Path(__file__).resolve().parents[2] / "shared")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default=str(shared / "data" / "cifar10-test-2000.npz"))
    parser.add_argument("--fit", type=int, default=500)
    parser.add_argument("--holdout", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--side-by-side", action="store_true",
                        help="start every run at once, each in its own thread, as the app's race does (all methods "
                             "and seeds share the cores); the time printed is then the race's wall-clock time")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs = [(label, algorithm, params, seed) for label, (algorithm, params) in METHODS.items() for seed in seeds]
    started = time.perf_counter()
    if args.side_by_side:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            futures = [pool.submit(run_one, args.images, a, p, s, args.fit, args.holdout, args.epochs)
                       for _, a, p, s in jobs]
            done = [f.result() for f in futures]
    else:
        done = [run_one(args.images, a, p, s, args.fit, args.holdout, args.epochs) for _, a, p, s in jobs]
    total = time.perf_counter() - started
    rows: dict[str, list[dict]] = {}
    for (label, *_), row in zip(jobs, done):
        rows.setdefault(label, []).append(row)
    print(f"CIFAR-10 ResNet-20, 8/255 L∞, {args.fit} fit / {args.holdout} held-out images, {args.epochs} epochs "
          f"each (the paper's protocol), seeds {args.seeds}, {args.threads} CPU threads; mean ± s.d. over the seeds")
    columns = ("grad_cosine", "update_mean_cosine", "budget_use", "quantisation_error", "fooling_ratio")
    print("| run | " + " | ".join(columns) + " | steps | image-gradients | s |")
    print("|---|" + "---:|" * (len(columns) + 3))
    for label, runs in rows.items():
        cells = []
        for key in columns:
            s = spread([r[key] for r in runs])
            cells.append(f"{s['mean']:.3f} ± {s['sd']:.3f}")
        print(f"| {label} | " + " | ".join(cells) + f" | {runs[0]['steps']} | {runs[0]['image_gradients']} | "
              f"{sum(r['seconds'] for r in runs):.0f} |")
    print(f"random noise {statistics.fmean(r['random'] for r in rows[next(iter(rows))]):.3f}; all runs "
          f"{total:.0f} s wall-clock ({'side by side, as a race' if args.side_by_side else 'one after another'}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
