"""Studies 4–6 (dominant labels / logit PCC, geometry of the decision boundary, fine-tuning defence): each study's
claim on CIFAR-10 ResNet-20 with small settings, plus the input checks. The numbers each test prints are the
ones the modules' docstrings quote for the small settings; the assertions test the claim, not those numbers."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch

from uap_core.artifacts import save_uap
from uap_core.errors import ParameterError
from uap_core.models import load_model
from uap_core.studies import get_study, study_names, write_outputs
from uap_core.studies.dominant_labels import flow_rows
from uap_core.studies.finetune import check_weights_path
from uap_core.studies.geometry import paper_equivalent_norm, random_unit_spectrum, top_singular


def _run(name: str, settings: dict):
    study = get_study(name)(settings=settings, device="cpu")
    fractions = [p.fraction for p in study.run()]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    result = study.result
    print(name, json.dumps(result.summary, default=str))
    return study, result


def _check_outputs(name: str, result, tmp_path) -> None:
    figure = get_study(name).figure(result)
    written = write_outputs(result, figure, tmp_path, png=False)
    names = {p.name for p in written}
    assert f"{name}.csv" in names and f"{name}.json" in names and f"{name}.html" in names
    assert set(json.loads((tmp_path / f"{name}.json").read_text())["summary"]) == set(result.summary)


def test_registered():
    assert {"dominant_labels", "geometry", "finetune"} <= set(study_names())


# ---------------------------------------------------------------------------------------------- 4. dominant labels
DOMINANT = dict(fit=500, holdout=500, epochs=2, batch_size=100, seed=0)


@pytest.fixture(scope="module")
def dominant(cifar_npz):
    return _run("dominant_labels", {**DOMINANT, "images": str(cifar_npz)})


@pytest.mark.slow
def test_dominant_labels_claim(dominant, tmp_path):
    """An SGA UAP fitted on 500 images, measured on 500 held-out ones: f(x+δ) follows f(δ) far more often than
    f(x+noise) follows f(noise) for random noise of δ's size, and one label takes far more than 1/10 of the images."""
    study, result = dominant
    s = result.summary
    rows = result.tables["images"]
    assert len(rows) == 500 and s["images"] == 500
    assert s["share_delta_dominates"] >= s["share_noise_dominates"] + 0.15, s
    assert s["mean_pcc_delta"] > s["mean_pcc_noise"] and s["mean_pcc_image"] < s["mean_pcc_image_noise"], s
    assert s["dominant_share"] >= 0.25, s  # 1/10 for labels spread evenly over 10 classes
    assert s["dominant_share"] > s["noise_dominant_share"], s  # noise, too, favours one class (frog) a little
    assert s["fooling_ratio"] > s["noise_fooling_ratio"] + 0.1, s
    # the tables agree with each other
    histogram = result.tables["histogram"]
    assert sum(h["perturbed_count"] for h in histogram) == 500 == sum(h["clean_count"] for h in histogram)
    assert histogram[0]["name"] == s["dominant_name"]
    assert [h["perturbed_count"] for h in histogram] == sorted((h["perturbed_count"] for h in histogram), reverse=True)
    assert sum(f["count"] for f in result.tables["flows"]) == 500
    assert sum(r["fooled"] for r in rows) / 500 == pytest.approx(s["fooling_ratio"], abs=1e-6)
    assert all(-1 - 1e-6 <= r["pcc_image"] <= 1 + 1e-6 and -1 - 1e-6 <= r["pcc_delta"] <= 1 + 1e-6 for r in rows)
    _check_outputs("dominant_labels", result, tmp_path)


@pytest.mark.slow
def test_dominant_labels_from_a_saved_uap(dominant, cifar_npz, tmp_path, monkeypatch):
    """The same δ saved — as a file, and as an entry of the user's library — and given as ``uap``: the same held-out
    images, the same measures, no fitting."""
    from uap_core.library import UAPLibrary

    study, fitted = dominant
    delta = study._last_run.result.delta
    metadata = {"model": "cifar_resnet20", "eps": 8 / 255, "norm": "linf", "algorithm": "sga"}
    path = save_uap(delta, metadata, tmp_path / "saved")
    monkeypatch.setenv("UAP_LIBRARY_DIR", str(tmp_path / "library"))
    UAPLibrary(tmp_path / "library").save("my cifar uap", delta, metadata)
    entry = tmp_path / "library" / "my cifar uap.safetensors"
    for value, source in ((str(path), str(path)), ("my cifar uap", str(entry))):
        _, loaded = _run("dominant_labels", {**DOMINANT, "images": str(cifar_npz), "uap": value})
        assert loaded.summary["uap_source"] == source and loaded.summary["fit_images"] is None
        assert [r["image"] for r in loaded.tables["images"]] == [r["image"] for r in fitted.tables["images"]]
        for key in ("share_delta_dominates", "share_noise_dominates", "fooling_ratio", "mean_pcc_delta"):
            assert loaded.summary[key] == pytest.approx(fitted.summary[key], abs=1e-6), key
        for key in ("dominant_name", "delta_name", "grey_name"):
            assert loaded.summary[key] == fitted.summary[key], key


def test_dominant_labels_bad_input(tmp_path):
    cls = get_study("dominant_labels")
    with pytest.raises(ParameterError, match="neither a file nor an entry"):
        cls(settings={"uap": str(tmp_path / "missing.safetensors")})
    with pytest.raises(ParameterError, match="unknown setting"):
        cls(settings={"colour": "red"})
    with pytest.raises(ParameterError, match="method"):
        cls(settings={"method": "nonsense"})
    with pytest.raises(ParameterError, match="unknown model"):
        cls(settings={"model": "resnet9000"})


def test_flow_rows_group_by_the_perturbed_labels_that_matter():
    names = ["a", "b", "c", "d"]
    clean = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3])
    perturbed = torch.tensor([1, 1, 1, 1, 2, 1, 0, 2])
    rows = flow_rows(clean, perturbed, names, top=2)
    # targets: the two most frequent labels of the fooled images, b (4) and c (2); d→a is "other"; b→b
    # "unchanged". Sources: a (3 images) and b (2; d's 2 lose the tie on the label), c and d are "other"
    assert rows == [
        {"source": "a", "target": "b", "source_label": 0, "target_label": 1, "count": 3},
        {"source": "other", "target": "other", "source_label": -1, "target_label": -1, "count": 1},
        {"source": "other", "target": "b", "source_label": -1, "target_label": 1, "count": 1},
        {"source": "other", "target": "c", "source_label": -1, "target_label": 2, "count": 1},
        {"source": "b", "target": "unchanged", "source_label": 1, "target_label": -2, "count": 1},
        {"source": "b", "target": "c", "source_label": 1, "target_label": 2, "count": 1}]
    assert sum(r["count"] for r in rows) == 8


# ---------------------------------------------------------------------------------------------- 5. geometry
@pytest.mark.slow
def test_geometry_claim(cifar_npz, tmp_path):
    """DeepFool normals at 200 images: their singular values fall faster than those of 200 random unit vectors,
    and random vectors from their top-10 subspace fool more held-out images than uniformly random ones of the
    same L2 norm (the paper's ξ carried to 32×32 at the same RMS per entry)."""
    _, result = _run("geometry", {"images": str(cifar_npz), "normals": 200, "holdout": 500, "subspace_dims": [10],
                                  "norm_scales": [1.0], "draws": 5, "seed": 0})
    s = result.summary
    sv = result.tables["singular_values"]
    assert s["normals_used"] + s["deepfool_failed"] == 200 and len(sv) == s["normals_used"] >= 190
    assert s["dimension"] == 3072 and s["paper_equivalent_l2"] == pytest.approx(paper_equivalent_norm(3072))
    middle = len(sv) // 2
    assert sv[middle]["normals_normalised"] < sv[middle]["random_normalised"] - 0.1, (sv[middle], s)
    assert s["sv_normalised_normals_k10"] < s["sv_normalised_random_k10"], s
    assert s["energy_top10_normals"] > s["energy_top10_random"], s
    assert s["fr_subspace_k10_scale1"] >= s["fr_random_scale1"] + 0.08, s
    fooling = result.tables["fooling"]
    assert [(r["kind"], r["k"]) for r in fooling] == [("subspace", 10), ("random", 3072)]
    assert all(r["draws"] == 5 and r["l2"] == pytest.approx(paper_equivalent_norm(3072), rel=1e-5) for r in fooling)
    _check_outputs("geometry", result, tmp_path)


def test_top_singular_matches_svd():
    matrix = torch.randn(50, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigma, basis = top_singular(matrix, 3)
    u, expected, _ = torch.linalg.svd(matrix, full_matrices=False)
    assert torch.allclose(sigma, expected, atol=1e-9) and basis.shape == (50, 3)
    assert torch.allclose((basis.T @ u[:, :3]).abs().diagonal(), torch.ones(3, dtype=torch.float64), atol=1e-8)


def test_random_unit_spectrum_matches_svd():
    """The block-wise Gram spectrum equals the SVD of the same normalised Gaussian columns."""
    generator = torch.Generator().manual_seed(3)
    spectrum = random_unit_spectrum(100, 7, generator, rows=16)
    generator = torch.Generator().manual_seed(3)
    columns = torch.cat([torch.randn(min(16, 100 - s), 7, generator=generator, dtype=torch.float64)
                         for s in range(0, 100, 16)])
    expected = torch.linalg.svdvals(columns / columns.norm(dim=0, keepdim=True))
    assert torch.allclose(spectrum, expected, atol=1e-9)


# ---------------------------------------------------------------------------------------------- 6. fine-tuning
FINETUNE = dict(train=600, fit=500, holdout=500, pool=3, pool_fit=300, rounds=1, epochs=3, uap_epochs=2,
                uap_batch_size=100, lr=0.001, seed=0)


def _files(folder) -> set[str]:
    return {os.path.join(d, f) for d, _, files in os.walk(folder) for f in files}


@pytest.mark.slow
def test_finetune_claim_and_no_weights_unless_asked(cifar_npz, tmp_path, monkeypatch):
    """One round (a pool of 3 SGA UAPs, 3 epochs on 600 images, half of them perturbed): a fresh UAP for the
    fine-tuned model fools far fewer held-out images than the one fitted the same way for the original, the
    original's UAP fools fewer than it did, clean accuracy stays within 3 points — and no weights file appears
    anywhere (the working folder, the weights folders)."""
    from uap_core.models import weights_dirs

    monkeypatch.chdir(tmp_path)
    watched = [tmp_path, *[d for d in weights_dirs() if d.is_dir()]]
    before = {str(d): _files(d) for d in watched}
    _, result = _run("finetune", {**FINETUNE, "images": str(cifar_npz)})
    rows = result.tables["rounds"]
    s = result.summary
    assert [r["round"] for r in rows] == [0, 1] and s["weights_written"] is None
    assert s["fooling_ratio_after"] <= s["fooling_ratio_before"] - 0.1, rows
    assert s["round0_uap_after"] < s["fooling_ratio_before"] - 0.05, rows
    assert s["clean_accuracy_after"] >= s["clean_accuracy_before"] - 0.03, rows
    assert {str(d): _files(d) for d in watched} == before
    _check_outputs("finetune", result, tmp_path / "out")


@pytest.mark.slow
def test_finetune_writes_weights_only_where_asked(cifar_npz, tmp_path):
    target = tmp_path / "weights" / "finetuned.pt"
    settings = {**FINETUNE, "images": str(cifar_npz), "train": 200, "fit": 100, "holdout": 100, "pool": 1,
                "pool_fit": 100, "epochs": 1, "uap_epochs": 1, "save_weights": str(target)}
    _, result = _run("finetune", settings)
    assert result.summary["weights_written"] == str(target.resolve()) and target.is_file()
    assert [p.name for p in target.parent.iterdir()] == ["finetuned.pt"]  # no temporary file left behind
    original = load_model("cifar_resnet20", "cpu")
    tuned = load_model("cifar_resnet20", "cpu", weights=target)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert not torch.allclose(original(x), tuned(x))


def test_finetune_refuses_protected_weights_paths(tmp_path):
    from uap_core.models import find_weights, get_spec, weights_dirs

    shipped = find_weights(get_spec("cifar_resnet20"))
    candidates = [str(d / "finetuned.pt") for d in weights_dirs()]
    if shipped is not None:
        candidates += [str(shipped), str(shipped.parent / "resnet20-finetuned.th")]
    for path in candidates:
        with pytest.raises(ParameterError, match="shipped or shared weights folder"):
            check_weights_path(path, "cifar_resnet20")
        with pytest.raises(ParameterError, match="shipped or shared weights folder"):
            get_study("finetune")(settings={"save_weights": path})
    with pytest.raises(ParameterError, match="is a folder"):
        check_weights_path(str(tmp_path), "cifar_resnet20")
    assert check_weights_path(str(tmp_path / "a.pt"), "cifar_resnet20") == (tmp_path / "a.pt").resolve()


def test_finetune_bad_split(cifar_npz):
    study = get_study("finetune")(settings={"images": str(cifar_npz), "train": 1500, "fit": 500, "holdout": 500},
                                  device="cpu")
    with pytest.raises(ParameterError, match=re.escape("finetune needs train + fit + holdout = 1500 + 500 + 500 = "
                                                      "2500 images; npz ") + ".* has 2000: lower train, fit or holdout"):
        study.run_all()
