"""What a new user hit (issue #21, "small things"): the transfer table's model names cut to 14 characters and no
random-noise row to judge it by; a study given a saved UAP still reserving a fit image; the dominant-label Sankey
unreadable at 1,000 classes. Each fix on real models where it measures something (CIFAR-10 ResNet-20, 100 images)."""

from __future__ import annotations

import numpy as np
import torch

from uap_core import metrics
from uap_core.evaluation import evaluate
from uap_core.images import load_images
from uap_core.library import shipped_library
from uap_core.models import load_model
from uap_core.studies import StudyResult, get_study
from uap_core.studies.dominant_labels import DominantLabels, flow_rows, held_out_only
from uap_core.studies.needs import study_needs
from uap_core.transfer import TransferMatrix, transfer_matrix

ZOO_UAP = "cifar resnet20 sga"  # shipped: 8/255 L∞ on CIFAR-10 ResNet-20


def test_the_transfer_table_shows_whole_names_aligned():
    names = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    matrix = TransferMatrix(["a"], names, [[0.5, None, 0.25]], {}, 10, {"random ±8/255 noise": [0.1, None, 0.05]})
    head, row, noise = matrix.table().splitlines()
    assert [head.split()] == [names], "every name whole: Lite0, Lite1 and Lite2 told apart"
    for name, value in zip(names, ("0.500", "—", "0.250")):  # each number ends under its model's name
        assert row.index(value) + len(value) == head.index(name) + len(name), (head, row)
    assert noise.startswith("random ±8/255 noise") and noise.split()[-3:] == ["0.100", "—", "0.050"]


def test_the_cli_transfer_table_has_a_random_noise_row(cifar_npz, capsys):
    """The noise row is the fooling ratio of seeded ±‖δ‖∞ sign noise (metrics.random_perturbation), measured as
    the UAP's own cell is; the shipped UAP fools far more than that noise (measured 0.94 against 0.51)."""
    from uap_core.__main__ import main

    artifact = shipped_library().load(ZOO_UAP)
    matrix = transfer_matrix({"zoo": artifact}, ["cifar_resnet20"], str(cifar_npz), "cpu", limit=100, noise=True)
    assert list(matrix.noise) == ["random ±8/255 noise"]
    model = load_model("cifar_resnet20", "cpu")
    pixels = load_images(str(cifar_npz), 32, 32, limit=100).pixels
    noise = metrics.random_perturbation((3, 32, 32), float(artifact.delta.abs().max()), "linf",
                                        torch.Generator().manual_seed(0))
    expected = evaluate(model, pixels, noise, precision="fp32").fooling_ratio
    assert matrix.noise["random ±8/255 noise"][0] == expected
    assert matrix.fooling_ratio[0][0] >= expected + 0.2, (matrix.fooling_ratio, expected)

    path = str(shipped_library().path_of(ZOO_UAP))
    assert main(["transfer", "--uap", path, "--models", "cifar_resnet20", "--images", str(cifar_npz),
                 "--limit", "100", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("random ±8/255 noise") and float(lines[-1].split()[-1]) == round(expected, 3)


def test_a_saved_uap_needs_no_fit_image(cifar_npz, tmp_path):
    """dominant_labels with a saved UAP on a source of exactly ``holdout`` images: all of them are measured (the
    issue's "1 + 300 = 301 images but the source has 300"); with room to spare the held-out images are those a
    fitted UAP would be measured on."""
    with np.load(cifar_npz) as data:
        x, y = data["x"][:20], data["y"][:20]
    small = tmp_path / "twenty.npz"
    np.savez(small, x=x, y=y)
    settings = {"images": str(small), "uap": f"shipped: {ZOO_UAP}", "holdout": 20}
    study = get_study("dominant_labels")(settings=settings, device="cpu")
    needs = study_needs(study)
    assert study.images_required() == 20 and needs.ready, needs.lines()
    result = study.run_all()
    assert sorted(r["image"] for r in result.tables["images"]) == sorted(
        load_images(str(small), 32, 32).names), "every image held out"

    images = load_images(str(cifar_npz), 32, 32, limit=50)
    assert held_out_only(images, 500, 30, 4).names == images.split(20, 30, 4)[1].names


def test_the_sankey_reads_at_1000_classes():
    """1,000 held-out ImageNet-like images, one per class: 600 sent to one label, 150 to another, 50 scattered,
    200 unchanged. The Sankey draws the two dominant labels, "other" and "unchanged" as targets (not 800 nodes)."""
    names = [f"class {k}" for k in range(1000)]
    clean = torch.arange(1000)
    perturbed = clean.clone()
    perturbed[:600] = 409
    perturbed[600:750] = 530
    perturbed[750:800] = torch.arange(750, 800) + 1  # each to a label of its own
    rows = flow_rows(clean, perturbed, names, top=2)
    assert sum(r["count"] for r in rows) == 1000
    into = {}
    for r in rows:
        into[r["target"]] = into.get(r["target"], 0) + r["count"]
    assert into == {"class 409": 599, "class 530": 150, "other": 50, "unchanged": 201}  # 409's own image unchanged
    assert len({r["source_label"] for r in rows}) == 3, "two clean labels of their own, the rest 'other'"

    result = StudyResult("dominant_labels", "t", {}, {"images": [], "histogram": [], "flows": rows},
                         {"delta_label": 409})
    sankey = next(trace for trace in DominantLabels.figure(result).data if trace.type == "sankey")
    labels = list(sankey.node.label)
    assert len(labels) == 3 + 4 and "→ class 409 (599)" in labels and "→ unchanged (201)" in labels
    assert labels.index("→ class 409 (599)") < labels.index("→ class 530 (150)"), "largest target first"
