"""The shipped zoo (assets/uaps, built by assets/make_zoo.py): read-only in the Library, small, and as strong on
held-out images as its metadata says."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
import torch

from uap_core.errors import ParameterError
from uap_core.evaluation import evaluate
from uap_core.images import load_images
from uap_core.library import SHIPPED_DIR, CombinedLibrary, UAPLibrary, shipped_library
from uap_core.models import get_spec, load_model

REPO = Path(__file__).resolve().parent.parent
ZOO_ENTRIES = runpy.run_path(str(REPO / "assets" / "make_zoo.py"))["ENTRIES"]  # a script, not a module

ZOO_LIMIT_BYTES = 15_000_000


def test_every_zoo_entry_is_shipped_small_and_within_its_budget():
    files = sorted(SHIPPED_DIR.iterdir())
    entries = shipped_library().list()
    assert {e.name for e in entries} == set(ZOO_ENTRIES), "every entry of make_zoo.py is built and shipped"
    assert sum(f.stat().st_size for f in files) < ZOO_LIMIT_BYTES
    for entry in entries:
        assert entry.error is None and entry.read_only and entry.source == "shipped"
        meta = entry.metadata
        assert meta["zoo"]["command"].startswith("python assets/make_zoo.py")
        assert meta["config"]["images"] in ("{imagenet}", "{cifar}") and meta["zoo"]["heldout_names"]
        assert entry.path.with_suffix(".png").is_file() and entry.path.with_suffix(".json").is_file()
        artifact = shipped_library().load(entry.name)
        spec = get_spec(meta["model"])
        assert tuple(artifact.delta.shape) == (3, spec.input_size, spec.input_size)
        assert artifact.delta.abs().max().item() <= meta["eps"] * (1 + 1e-5), "L∞ budget"
        held_out = meta["zoo"]["heldout"]
        assert held_out["fooling_ratio"] > held_out["random_fooling_ratio"] + 0.2, entry.name


def test_shipped_entries_cannot_be_deleted_renamed_or_overwritten(tmp_path):
    library = CombinedLibrary(UAPLibrary(tmp_path / "mine"), [shipped_library()])
    shipped = [e for e in library.list() if e.source == "shipped"]
    assert shipped and all(e.name.startswith("shipped: ") for e in shipped)
    name = shipped[0].name
    before = {p: p.read_bytes() for p in SHIPPED_DIR.iterdir()}
    delta = library.load(name).delta
    with pytest.raises(ParameterError, match="read-only"):
        library.delete(name)
    with pytest.raises(ParameterError, match="read-only"):
        library.rename(name, "mine now")
    with pytest.raises(ParameterError, match="read-only"):
        library.save(name, delta, {}, overwrite=True)
    with pytest.raises(ParameterError, match="read-only"):
        shipped_library().delete(name.split(": ", 1)[1])
    with pytest.raises(ParameterError, match="read-only"):
        shipped_library().save("new", delta, {})
    assert {p: p.read_bytes() for p in SHIPPED_DIR.iterdir()} == before, "nothing in assets/uaps changed"
    # a copy under a user name is the user's own: renamed and deleted freely
    library.save("my copy", delta, {"copied_from": name})
    assert [e.name for e in library.list() if e.source == "user"] == ["my copy"]
    library.rename("my copy", "my lite0")
    library.delete("my lite0")
    assert all(e.source == "shipped" for e in library.list())


def _heldout(meta: dict, imagenet_200: Path, cifar_npz: Path):
    """The entry's held-out images exactly (by file name or npz index), decoded as the run decoded them."""
    spec = get_spec(meta["model"])
    source = str(imagenet_200) if meta["config"]["images"] == "{imagenet}" else str(cifar_npz)
    images = load_images(source, spec.input_size, spec.resize_size, list(spec.class_names))
    position = {Path(n).name: i for i, n in enumerate(images.names)}
    index = torch.tensor([position[n] for n in meta["zoo"]["heldout_names"]])
    return images.pixels[index], images.labels[index]


@pytest.fixture(scope="module")
def decoded_sources(imagenet_200, cifar_npz):
    """The entries' image sources decoded as their runs decoded them, once per (source, size)."""
    cache: dict[tuple, object] = {}

    def images_of(meta: dict):
        spec = get_spec(meta["model"])
        source = str(imagenet_200) if meta["config"]["images"] == "{imagenet}" else str(cifar_npz)
        key = (source, spec.input_size, spec.resize_size)
        if key not in cache:
            cache[key] = load_images(source, spec.input_size, spec.resize_size, list(spec.class_names))
        return cache[key]
    return images_of


@pytest.mark.parametrize("name", list(ZOO_ENTRIES))
def test_held_out_images_of_every_entry_are_disjoint_from_its_fit_images(name, decoded_sources):
    """Every entry's recorded held-out images are the held-out half of the split its recorded settings (images,
    fit, holdout, seed) make, and none of them is a fit image: the recorded fooling ratio is a held-out figure.
    The fit images are not recorded by name; the split rebuilt from the recorded settings names them, and it must
    give exactly the recorded held-out names (else the zoo was built with another split rule: rebuild it)."""
    meta = shipped_library().load(name).metadata
    config, zoo = meta["config"], meta["zoo"]
    held_out_names = zoo["heldout_names"]
    assert len(set(held_out_names)) == len(held_out_names) == config["holdout"] == zoo["heldout"]["count"]
    fit_set, held_out = decoded_sources(meta).split(config["fit"], config["holdout"], config["seed"])
    assert [Path(n).name for n in held_out.names] == held_out_names, "the recorded split is the settings' split"
    fit_names = {Path(n).name for n in fit_set.names}
    assert len(fit_names) == config["fit"] and not fit_names & set(held_out_names)
    # what the run fitted on: the fit photos (times their views), or nothing at all for a data-free method
    data_free = meta["algorithm_family"] == "data-free"
    assert meta["fit_images"] == (0 if data_free else config["fit"] * max(1, config["augment"]))
    assert config["holdout_views"] == 0  # the held-out figure is on the photos themselves


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lite0 sga", "cifar resnet20 sga"])
def test_shipped_uap_fools_its_held_out_images_as_recorded(name, imagenet_200, cifar_npz):
    """Re-measured on exactly the held-out images named in its metadata (never fitted): the recorded fooling ratio
    holds, and the Lite0 SGA entry reaches the zoo's target of 60 % at 10/255 L∞.

    Two of the five entries, one per model family (every entry's held-out set is checked against its fit set
    above): on 2 busy CPU cores a Lite0 entry's 100 held-out photos cost 9–15 s to re-measure, CIFAR ResNet-56's
    1,000 images about 12 s, ResNet-20's 5–6 s. The other three (lite0 sgd-uap 0.670, lite0 gd-uap 0.360, cifar
    resnet56 sga 0.839) re-measured equal to their records when this was written; they are left out to keep the
    suite within its 25-minute budget (together about 35 s)."""
    artifact = shipped_library().load(name)
    meta = artifact.metadata
    pixels, labels = _heldout(meta, imagenet_200, cifar_npz)
    model = load_model(meta["model"], "cpu")
    fit_names = set(meta["zoo"]["heldout_names"])
    assert len(fit_names) == len(pixels) == meta["zoo"]["heldout"]["count"]
    measured = evaluate(model, pixels, artifact.delta, labels).fooling_ratio
    assert measured == pytest.approx(meta["zoo"]["heldout"]["fooling_ratio"], abs=0.011)
    if name == "lite0 sga":
        assert measured >= 0.60
