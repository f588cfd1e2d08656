"""Build the shipped recorded races in ``assets/recordings`` (replayed on Home, the race and from the Library).

The SGA paper's comparison (Liu et al., ICCV 2023, Fig. 3 and Table 1) in its own protocol — equal epochs over the
same images, so SGA spends K× more image-gradients than SGD-UAP —: small-batch SGD-UAP (B 10: unstable),
large-batch SGD-UAP (B as SGA's outer batch: stable, poorer optima) and SGA (small mini-batches aggregated over K
inner steps: stable and best). Every run is a :class:`uap_core.run.Run` recorded by :mod:`uap_core.recording`;
its ``command`` is the ``python -m uap_core generate …`` that makes the same run (the same seed on a CPU gives the
same δ and the same history, up to the timings).

- ``cifar resnet20``: CIFAR-10 ResNet-20, 8/255 L∞, 1,000 CIFAR-10 test images to fit and 1,000 held out,
  5 epochs each (about a minute per run on 2 cores).
- ``lite0``: EfficientNet-Lite0 (224 px), 10/255 L∞, on ImageNet validation photos (one each of 200 classes):
  40 to fit, 80 held out, 4 epochs each, B 20 for SGA (m 10, K 4) and large-batch SGD-UAP, a sign step of 2/255
  (the Home demo's; at 0.1·eps the 8 steps leave every run at random noise). A CPU-sized setting
  (built on 2 CPU cores shared with other work, about 10 minutes for the three runs), far from the paper's 10,000
  images: its recordings say so in ``scale``.

Only recorded histories and δ (8-bit checkpoints, the kept δ in float16) are shipped: no image, no weights.

    python assets/make_recordings.py                      # both races, data from ../shared (the dev checkout)
    python assets/make_recordings.py --only "cifar resnet20" --cifar /data/cifar10-test.npz
    python assets/make_recordings.py --list
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import sys
import time
from pathlib import Path

if importlib.util.find_spec("uap_core") is None:  # python assets/make_recordings.py … runs the installed package
    sys.exit("assets/make_recordings.py needs the uap_core package installed: `pip install -e .` in the repository "
             "root (`pip install -r requirements-dev.txt` does it)")

from uap_core.algorithms import get_algorithm
from uap_core.provenance import generate_command
from uap_core.recording import record_run, save_recording
from uap_core.run import Run, RunConfig

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("UAP_SHARED_DIR") or HERE.parent.parent / "shared")
# how the commands name the data (relative to the repository root, as the README's study commands do)
DATA_AS_WRITTEN = {"{cifar}": "../shared/data/cifar10-test-2000.npz",
                   "{imagenet}": "../shared/data/imagenet-samples-200"}

RACES: dict[str, dict] = {
    "cifar resnet20": {
        "settings": dict(model="cifar_resnet20", eps=8 / 255, images="{cifar}", fit=1000, holdout=1000, epochs=5,
                         seed=0, device="cpu"),
        "scale": "CIFAR-10 ResNet-20, 1,000 CIFAR-10 test images to fit, 1,000 held out, 8/255 L∞, 5 epochs each "
                 "(the SGA paper's equal-epochs protocol)",
        "runs": [("SGA (B 250, m 10, K 4)", "sga", {}),
                 ("SGD-UAP, large batch (B 250)", "sgd_uap", {}),
                 ("SGD-UAP, small batch (B 10)", "sgd_uap", {"batch_size": 10})],
    },
    "lite0": {
        "settings": dict(model="efficientnet_lite0", eps=10 / 255, images="{imagenet}", fit=40, holdout=80,
                         epochs=4, seed=0, device="cpu", keep="last", eval_every=2),
        "scale": "EfficientNet-Lite0 at 224 px, 40 ImageNet validation photos to fit and 80 held out (of 200 "
                 "photos, one each of 200 classes), 10/255 L∞, 4 epochs each (the SGA paper's equal-epochs "
                 "protocol), sign step 2/255 — a CPU-sized setting (2 shared CPU cores, about 10 minutes for the "
                 "race), far from the paper's 10,000 images",
        # step 2/255 (the Home demo's): at the paper's 0.1·eps, 8 sign steps leave δ far inside its budget and
        # every run at random noise (measured: 0.05–0.125 held out against 0.10)
        "runs": [("SGA (B 20, m 10, K 4)", "sga", {"batch_size": 20, "step_size": 2 / 255}),
                 ("SGD-UAP, large batch (B 20)", "sgd_uap", {"batch_size": 20, "step_size": 2 / 255}),
                 ("SGD-UAP, small batch (B 10)", "sgd_uap", {"batch_size": 10, "step_size": 2 / 255})],
    },
}


def file_name(race: str, index: int) -> str:
    algorithm_tag = RACES[race]["runs"][index][0].split(" (")[0].split(",")[0].lower().replace(" ", "-")
    batch = RACES[race]["runs"][index][2].get("batch_size")
    return f"{race} {index + 1} {algorithm_tag}{f' b{batch}' if batch else ''}"


def build_race(race: str, out: Path, data: dict[str, str]) -> list[dict]:
    spec = RACES[race]
    rows = []
    for index, (title, algorithm, params) in enumerate(spec["runs"]):
        settings = dict(spec["settings"])
        written = DATA_AS_WRITTEN[settings["images"]]
        settings["images"] = data[settings["images"]]
        config = RunConfig(algorithm=algorithm, params=params, **settings)
        command = generate_command(config, get_algorithm(algorithm).Params, images=written)
        started = time.perf_counter()

        def progress(event, title=title):
            if event.kind == "eval":
                print(f"  [{race}: {title}] step {event.step} held-out {event.data['fooling_ratio']:.3f} "
                      f"({event.elapsed:.0f} s)", file=sys.stderr, flush=True)

        recording = record_run(Run(config), command=command, on_event=progress, title=title, race=race,
                               scale=spec["scale"], rank=list(RACES).index(race) * 10 + index,
                               built_by="python assets/make_recordings.py --only " + shlex.quote(race))
        path = save_recording(recording, out / file_name(race, index))
        row = {"race": race, "run": title, "file": path.name, "kilobytes": round(path.stat().st_size / 1024, 1),
               "final_fooling_ratio": recording.final_fooling_ratio,
               "kept_fooling_ratio": recording.meta["summary"]["fooling_ratio"],
               "random_fooling_ratio": recording.meta["summary"]["random_fooling_ratio"],
               "mean_grad_cosine": recording.mean_of("grad_cosine"), "steps": recording.meta["summary"]["steps"],
               "image_gradients": recording.meta["summary"]["image_gradients"],
               "seconds": recording.meta["seconds"], "wall_seconds": round(time.perf_counter() - started, 1),
               "command": command}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def markdown_table(folder: Path) -> str:
    """The recordings in ``folder`` as a Markdown table (the README's), read from the files."""
    from uap_core.recording import list_recordings

    lines = ["| race | run | held-out FR (last point) | random noise | mean adjacent cosine | steps | "
             "image-gradients | recorded in | size |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for rec in list_recordings(folder):
        summary = rec.meta["summary"]
        lines.append(f"| {rec.meta.get('race')} | {rec.title} | {rec.final_fooling_ratio:.3f} | "
                     f"{summary['random_fooling_ratio']:.3f} | {rec.mean_of('grad_cosine'):.2f} | {summary['steps']} | "
                     f"{summary['image_gradients']} | {rec.seconds:.0f} s | "
                     f"{rec.path.stat().st_size / 1024:.0f} KB |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--imagenet", default=str(SHARED / "data" / "imagenet-samples-200"),
                        help="folder of ImageNet JPEGs (default: ../shared/data/imagenet-samples-200)")
    parser.add_argument("--cifar", default=str(SHARED / "data" / "cifar10-test-2000.npz"),
                        help="CIFAR-10 .npz with x (N,32,32,3 uint8) and y (default: ../shared/data/…)")
    parser.add_argument("--only", nargs="+", choices=list(RACES), help="build only these races")
    parser.add_argument("--out", default=str(HERE / "recordings"), help="output folder (default: assets/recordings)")
    parser.add_argument("--list", action="store_true", help="list the races and their settings")
    parser.add_argument("--table", action="store_true", help="print the Markdown table of the recordings in --out")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_table(Path(args.out)))
        return 0
    if args.list:
        for race, spec in RACES.items():
            print(f"{race}: {spec['scale']}; runs: {', '.join(title for title, _, _ in spec['runs'])}")
        return 0
    out = Path(args.out)
    for race in args.only or list(RACES):
        build_race(race, out, {"{cifar}": args.cifar, "{imagenet}": args.imagenet})
    total = sum(p.stat().st_size for p in out.glob("*.recording.npz"))
    print(f"recordings: {len(list(out.glob('*.recording.npz')))} files, {total / 1024:.0f} KB in {out}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
