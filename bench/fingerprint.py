"""A fingerprint of every method's results, to check that a restructuring changes no number.

Each registered method runs briefly on the CPU (CIFAR-10 ResNet-20, 64 fit / 64 held-out images of the test data,
8/255 L∞, seed 3, one CPU thread unless --threads): the SHA-256 of its kept δ, its last δ and its history (without the timings), its
steps, best step, reason and held-out fooling ratio. Save one before a change and compare after it:

    python bench/fingerprint.py --out /tmp/before.json                       # on the commit before
    python bench/fingerprint.py --out /tmp/after.json --compare /tmp/before.json

Prints one line per method and, with --compare, IDENTICAL or the methods that differ (exit 1).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

try:
    import torch

    from uap_core.algorithms import ALGORITHMS
    from uap_core.run import Run, RunConfig
except ImportError as missing:  # pragma: no cover - a checkout without `pip install -e .`
    sys.exit(f"bench/fingerprint.py needs the uap_core package installed: `pip install -e .` ({missing})")

TIMINGS = ("elapsed", "images_per_second", "step_seconds", "seconds")
# measures added to the history after the golden fingerprint was taken: left out of its hash, so the old numbers
# still compare (tests/test_metrics.py checks them against their definitions)
ADDED = ("update_mean_cosine", "budget_use")
DATA_FREE_ITERATIONS = 6


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def fingerprint(images: str, threads: int = 1) -> dict[str, dict]:
    torch.set_num_threads(threads)
    out: dict[str, dict] = {}
    for name, cls in ALGORITHMS.items():
        data_free = cls.family == "data-free"
        config = RunConfig(model="cifar_resnet20", algorithm=name, eps="8/255", images=images, fit=64, holdout=64,
                           seed=3, device="cpu", eval_every=2,
                           params={"iterations": DATA_FREE_ITERATIONS} if data_free else {},
                           max_image_gradients=None if data_free else 300)
        result = Run(config).run_to_end()
        history = [{k: v for k, v in event.items() if k not in TIMINGS + ADDED} for event in result.history]
        out[name] = {"delta": digest(result.delta.numpy().tobytes()),
                     "last": digest(result.last_delta.numpy().tobytes()),
                     "history": digest(json.dumps(history, sort_keys=True, default=str).encode()),
                     "steps": result.steps, "best_step": result.best_step, "reason": result.reason,
                     "fooling_ratio": result.evaluation.fooling_ratio}
        print(name, out[name], flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shared = Path(os.environ.get("UAP_SHARED_DIR") or Path(__file__).resolve().parents[2] / "shared")
    parser.add_argument("--images", default=str(shared / "data" / "cifar10-test-2000.npz"))
    parser.add_argument("--out", required=True, help="JSON file the fingerprint is written to")
    parser.add_argument("--compare", help="a fingerprint saved before the change")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (results may differ between counts)")
    args = parser.parse_args(argv)
    now = fingerprint(args.images, args.threads)
    Path(args.out).write_text(json.dumps(now, indent=1))
    if not args.compare:
        return 0
    before = json.loads(Path(args.compare).read_text())
    different = [name for name in sorted(set(before) | set(now)) if before.get(name) != now.get(name)]
    print("IDENTICAL: every method" if not different else f"DIFFERENT: {', '.join(different)}")
    return 1 if different else 0


if __name__ == "__main__":
    sys.exit(main())
