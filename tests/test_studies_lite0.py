"""Every study runs to the end on EfficientNet-Lite0 with a small folder of ImageNet photos (the setup the Studies
page offers beside CIFAR-10: uap_core.studies.setups), at tiny settings — a Lite0 image-gradient costs ~20 times a
CIFAR ResNet-20's, so a few images, one or two passes, tiny budgets. Each result is checked against the study's own
definitions (row counts, shares of the held-out images, white-box cells, the rows of the settings), not just "ran".
The Lite0 setup's own defaults are checked to fit the 25 embedded samples with offline models only."""

from __future__ import annotations

import math
import shutil

import pytest

from uap_core.studies import get_study, study_names
from uap_core.studies.needs import study_needs
from uap_core.studies.setups import LITE0, setup_defaults

FOLDER_IMAGES = 6
TINY: dict[str, dict] = {
    "images_needed": {"methods": ["sgd_uap"], "fit_sizes": [1, 2], "seeds": [0], "holdout": 3, "epochs": 1,
                      "min_steps": 0},
    "batch_stability": {"fit": 2, "holdout": 3, "batch_sizes": [2], "sga_batch": 2, "sga_minibatches": [1],
                        "inner_passes": 1, "budget": 4},
    "transfer_ensembles": {"surrogates": [LITE0], "targets": [LITE0, "efficientnet_lite1"], "methods": ["sgd_uap"],
                           "fit": 2, "holdout": 3, "epochs": 1},
    "dominant_labels": {"method": "sgd_uap", "fit": 2, "holdout": 4, "epochs": 1, "batch_size": 2},
    "geometry": {"normals": 2, "holdout": 2, "subspace_dims": [1], "norm_scales": [1.0], "draws": 1},
    "finetune": {"method": "sgd_uap", "train": 2, "fit": 2, "holdout": 2, "uap_epochs": 1, "uap_batch_size": 2,
                 "pool": 1, "pool_fit": 1, "rounds": 1, "epochs": 1, "train_batch": 2},
    "robustness": {"method": "sgd_uap", "robust": ["jpeg"], "fit": 2, "holdout": 3, "epochs": 1, "batch_size": 2,
                   "jpeg_qualities": [50], "rotations": [10.0], "scales": [1.2], "blur_sigmas": [1.0],
                   "brightness": [0.6]},
}


@pytest.fixture(scope="module")
def folder(imagenet_200, tmp_path_factory):
    """Six labelled ImageNet photos (<wnid>_*.JPEG names give the labels) in a folder of their own."""
    target = tmp_path_factory.mktemp("lite0_folder")
    for path in sorted(imagenet_200.iterdir())[:FOLDER_IMAGES]:
        shutil.copy2(path, target / path.name)
    return target


@pytest.fixture(scope="module")
def results(folder):
    """Every study, run once on the folder (Lite0 setup + TINY), on the CPU."""
    done = {}
    for name in study_names():
        settings = {**setup_defaults(name, "lite0"), **TINY[name], "images": str(folder)}
        if "device" in {f for f in get_study(name).Settings.__dataclass_fields__}:
            settings["device"] = "cpu"
        study = get_study(name)(settings=settings, device="cpu")
        assert study.images_required() <= FOLDER_IMAGES, name
        done[name] = study.run_all()
    return done


def _ratio(value) -> bool:
    return value is not None and 0.0 <= value <= 1.0


def test_every_study_runs_to_the_end_on_lite0(results):
    assert list(results) == study_names()
    for name, result in results.items():
        assert not result.stopped and result.settings.get("model", LITE0) == LITE0, name
        assert all(rows for rows in result.tables.values()), (name, {k: len(v) for k, v in result.tables.items()})


def test_images_needed_and_batch_stability_rows(results):
    runs = results["images_needed"].tables["runs"]
    assert [(r["fit_images"], r["heldout_images"]) for r in runs] == [(1, 3), (2, 3)]
    assert all(_ratio(r["fooling_ratio"]) and _ratio(r["random_fooling_ratio"]) for r in runs)
    stability = {r["run"]: r for r in results["batch_stability"].tables["runs"]}
    assert set(stability) == {"SGD-UAP B=2", "SGA B=2 m=1"}
    assert all(r["image_gradients"] <= 4 + 2 and _ratio(r["fooling_ratio"]) for r in stability.values())
    assert stability["SGA B=2 m=1"]["sign_ops"] < stability["SGD-UAP B=2"]["sign_ops"] + 1


def test_transfer_runs_between_the_shipped_lite_models(results):
    cells = results["transfer_ensembles"].tables["cells"]
    assert [(c["surrogate"], c["target"], c["white_box"]) for c in cells] == [
        (LITE0, LITE0, True), (LITE0, "efficientnet_lite1", False)]
    assert all(_ratio(c["fooling_ratio"]) and _ratio(c["random_fooling_ratio"]) for c in cells)


def test_dominant_labels_geometry_and_finetune_tables(results):
    dominant = results["dominant_labels"]
    assert len(dominant.tables["images"]) == 4
    assert sum(h["perturbed_count"] for h in dominant.tables["histogram"]) == 4
    assert sum(f["count"] for f in dominant.tables["flows"]) == 4
    geometry = results["geometry"]
    assert geometry.summary["dimension"] == 3 * 224 * 224
    assert geometry.summary["normals_used"] + geometry.summary["deepfool_failed"] == 2
    values = [r["normals"] for r in geometry.tables["singular_values"]]
    assert values == sorted(values, reverse=True) and math.isclose(
        geometry.tables["singular_values"][0]["normals_normalised"], 1.0)
    assert {r["kind"] for r in geometry.tables["fooling"]} == {"subspace", "random"}
    rounds = results["finetune"].tables["rounds"]
    assert [r["round"] for r in rounds] == [0, 1]
    assert all(_ratio(r["clean_accuracy"]) and r["heldout_images"] == 2 for r in rounds)


def test_the_lite0_setup_fits_the_embedded_samples_offline():
    """Each study's Lite0 defaults need at most the 25 embedded samples and only models that ship with the package
    (Lite0, and Lite1/Lite2 for the transfer study): nothing to download."""
    for name in study_names():
        needs = study_needs(get_study(name)(settings={**setup_defaults(name, "lite0"), "images": "samples"}))
        assert needs.images <= 25 and needs.ready and not needs.downloads, (name, needs.lines())
        assert [i.state for i in needs.items if i.kind == "model"] == ["ready"] * (len(needs.items) - 1), name
