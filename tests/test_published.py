"""Published perturbations load as published: the UAP paper's .mat, GD-UAP's and TRM-UAP's .npy, SGD-UAP's .pth.

The files are made here in the publishers' layouts (see uap_core/published.py for where each was checked); a
.pth is read without unpickling (uap_core/safe_pickle.py), so a malicious one is refused without running anything.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from uap_core import published, safe_pickle
from uap_core.__main__ import main
from uap_core.artifacts import load_uap, load_uap_bytes
from uap_core.errors import ArtifactError, ParameterError
from uap_core.evaluation import evaluate
from uap_core.library import UAPLibrary
from uap_core.transfer import images_for

SIDE = 224


def rng_array(shape: tuple[int, ...], bound: float, seed: int = 0, dtype=np.float32) -> np.ndarray:
    """Entries uniform in [-bound, bound], with distinct values per channel so that a wrong axis shows."""
    return (np.random.default_rng(seed).uniform(-bound, bound, size=shape)).astype(dtype)


def pixel(values: np.ndarray) -> torch.Tensor:
    """What the loader must return for 0-255 values: float32(value / 255), computed in float64."""
    return torch.from_numpy((values.astype(np.float64) / 255).astype(np.float32))


# ---------------------------------------------------------------------------------------------------- .mat
def test_uap_paper_mat_is_width_first_rgb_0_255(tmp_path: Path) -> None:
    r = rng_array((SIDE, SIDE, 3), 10.0)  # W×H×C, ±10 on the 0-255 scale (xi = 10), MATLAB single
    path = tmp_path / "VGG-16.mat"
    scipy.io.savemat(path, {"r": r})
    art = load_uap(path, expected_size=(SIDE, SIDE), eps=10 / 255)
    assert torch.equal(art.delta, pixel(r.transpose(2, 1, 0)))  # c, h, w ← r[w, h, c]
    record = art.metadata["published"]
    assert record == {"format": "mat", "source": "UAP (LTS4/universal)", "source_shape": [SIDE, SIDE, 3],
                      "source_layout": "WHC", "source_scale": "0-255", "source_channels": "RGB",
                      "converted": ["W×H×C → 3×H×W", "÷255 (0-255 scale → pixel units)"]}
    assert art.metadata["metadata_missing"] is True
    # the caller's overrides: rows first, and already in pixel units
    rows = load_uap(path, layout="HWC")
    assert torch.equal(rows.delta, pixel(r.transpose(2, 0, 1)))
    assert torch.equal(load_uap(path, scale="unit").delta, torch.from_numpy(r.transpose(2, 1, 0).copy()))
    # the same bytes uploaded under another name are recognised by their MATLAB header
    assert torch.equal(load_uap_bytes(path.read_bytes(), "upload.bin").delta, art.delta)


def test_mat_content_other_than_a_numeric_array_is_refused(tmp_path: Path) -> None:
    cell = np.empty((1, 2), dtype=object)
    cell[0, 0], cell[0, 1] = np.zeros((4, 4, 3)), "x"
    cases = {
        "cell.mat": ({"r": cell}, "cell array or MATLAB object"),
        "struct.mat": ({"r": {"a": np.zeros(3)}}, "a struct"),
        "text.mat": ({"r": "hello"}, "array of <U5"),
        "two.mat": ({"a": np.zeros((4, 4, 3)), "b": np.zeros((4, 4, 3))}, r"no variable named 'r'.*a, b"),
    }
    for name, (variables, message) in cases.items():
        scipy.io.savemat(tmp_path / name, variables)
        with pytest.raises(ArtifactError, match=message):
            load_uap(tmp_path / name)
    one = tmp_path / "v.mat"
    scipy.io.savemat(one, {"v": rng_array((8, 8, 3), 10.0)})  # a single variable of another name is taken
    assert load_uap(one).delta.shape == (3, 8, 8)
    (tmp_path / "hdf5.mat").write_bytes(b"MATLAB 7.3 MAT-file, Platform: GLNXA64" + b"\0" * 600)
    with pytest.raises(ArtifactError, match="v7.3 .HDF5"):
        load_uap(tmp_path / "hdf5.mat")
    (tmp_path / "junk.mat").write_bytes(b"MATLAB 5.0 MAT-file" + b"\xff" * 200)
    with pytest.raises(ArtifactError, match="not a readable MATLAB .mat file"):
        load_uap(tmp_path / "junk.mat")


# ---------------------------------------------------------------------------------------------------- .npy
def test_gd_uap_npy_is_bgr_nhwc_0_255(tmp_path: Path) -> None:
    v = rng_array((1, SIDE, SIDE, 3), 10.0, seed=1)  # GD-UAP: (1, size, size, 3), clipped to ±10, BGR
    np.save(tmp_path / "vgg16_with_data.npy", v)
    art = load_uap(tmp_path / "vgg16_with_data.npy", eps=10 / 255)
    assert torch.equal(art.delta, pixel(v[0].transpose(2, 0, 1)[::-1].copy()))  # BGR → RGB
    record = art.metadata["published"]
    assert (record["source"], record["source_layout"], record["source_scale"], record["source_channels"]) == \
        ("GD-UAP", "NHWC", "0-255", "BGR")
    assert record["converted"] == ["dropped the batch axis", "H×W×C → 3×H×W",
                                   "÷255 (0-255 scale → pixel units)", "BGR → RGB"]
    # an unknown name: NHWC by shape, 0-255 by range (|entry| > 1), RGB unless told
    np.save(tmp_path / "mine.npy", v)
    assert torch.equal(load_uap(tmp_path / "mine.npy").delta, pixel(v[0].transpose(2, 0, 1)))
    assert torch.equal(load_uap(tmp_path / "mine.npy", channels="bgr").delta, art.delta)
    assert torch.equal(load_uap(tmp_path / "vgg16_with_data.npy", channels="rgb").delta,
                       pixel(v[0].transpose(2, 0, 1)))


def test_trm_uap_npy_is_already_pixel_units(tmp_path: Path) -> None:
    v = rng_array((1, 3, SIDE, SIDE), 10 / 255, seed=2)  # TRM-UAP: the Adam-fitted delta, (1, 3, 224, 224)
    np.save(tmp_path / "uap_vgg16.npy", v)
    art = load_uap(tmp_path / "uap_vgg16.npy", eps=10 / 255)
    assert torch.equal(art.delta, torch.from_numpy(v[0]))
    assert art.metadata["published"]["source"] == "TRM-UAP"
    assert art.metadata["published"]["converted"] == ["dropped the batch axis"]
    native = tmp_path / "native.npy"  # a native 3×H×W file in pixel units is not touched, nor annotated
    np.save(native, v[0])
    assert load_uap(native).metadata == {"metadata_missing": True}


def test_overrides_are_checked(tmp_path: Path) -> None:
    np.save(tmp_path / "d.npy", rng_array((3, 8, 8), 0.03))
    with pytest.raises(ParameterError, match="layout must be one of auto, CHW, HWC, WHC"):
        load_uap(tmp_path / "d.npy", layout="NCHW")
    with pytest.raises(ParameterError, match="scale must be auto, unit"):
        load_uap(tmp_path / "d.npy", scale=100)
    with pytest.raises(ParameterError, match="channels must be one of"):
        load_uap_bytes((tmp_path / "d.npy").read_bytes(), "d.npy", channels="rgba")
    with pytest.raises(ArtifactError, match="layout HWC puts the channels on an axis of length 8"):
        load_uap(tmp_path / "d.npy", layout="HWC")
    np.save(tmp_path / "batch.npy", rng_array((2, 8, 8, 3), 10.0))
    with pytest.raises(ArtifactError, match="not a batch"):
        load_uap(tmp_path / "batch.npy")


# ---------------------------------------------------------------------------------------------------- .pth
def test_sgd_uap_pth_reads_without_unpickling(tmp_path: Path) -> None:
    delta = torch.from_numpy(rng_array((1, 3, SIDE, SIDE), 10 / 255, seed=3))
    torch.save(delta, tmp_path / "sgd-resnet50-eps10.pth")
    art = load_uap(tmp_path / "sgd-resnet50-eps10.pth", eps=10 / 255)
    assert torch.equal(art.delta, delta[0])
    assert art.metadata["published"]["source"] == "SGD-UAP"
    # SGD-UAP's own shape (3×H×W), in both torch.save containers, fp16 too: values exact, nothing to record
    for kwargs in ({}, {"_use_new_zipfile_serialization": False}):
        for tensor in (delta[0], delta[0].half(), delta[0][:, :, ::2]):  # ::2: a strided view of a bigger storage
            buf = io.BytesIO()
            torch.save(tensor, buf, **kwargs)
            loaded = load_uap_bytes(buf.getvalue(), "sgd-eps10.pth")
            assert torch.equal(loaded.delta, tensor.float()) and loaded.metadata == {"metadata_missing": True}
    # the reader itself: the same object torch.load gives, for a checkpoint-like dict
    checkpoint = {"delta": delta[0], "losses": [1.5, 2.0], "eps": 10 / 255, "name": "x", "shape": (3, 4)}
    buf = io.BytesIO()
    torch.save(checkpoint, buf, pickle_protocol=4)
    read = safe_pickle.read_torch_file(buf.getvalue(), "c.pth")
    assert read.keys() == checkpoint.keys() and torch.equal(read["delta"], delta[0])
    assert read["losses"] == [1.5, 2.0] and read["shape"] == (3, 4)


class Payload:
    """Unpickling this calls exec(), which creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def torch_zip_with_pickle(pickle_bytes: bytes) -> bytes:
    """A torch.save zip whose data.pkl is ``pickle_bytes``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("archive/data.pkl", pickle_bytes)
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")
    return buf.getvalue()


def test_pickles_that_would_run_code_are_refused_unrun(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(Payload(marker)))  # the payload is live: unpickling runs it
    assert marker.exists()
    marker.unlink()
    touch = f"touch {marker}".encode()
    os_system = b"cos\nsystem\n(S'" + touch + b"'\ntR."  # protocol 0: GLOBAL os.system, REDUCE
    buf = io.BytesIO()
    torch.save({"delta": torch.zeros(3, 4, 4), "extra": Payload(marker)}, buf)
    cases = {
        "evil.pth": (buf.getvalue(), r"it references (__builtin__|builtins)\.exec"),
        "os.pth": (torch_zip_with_pickle(os_system), r"it references os\.system"),
        "raw.pt": (pickle.dumps(Payload(marker), protocol=5), r"it references builtins\.exec"),
        "legacy.pth": (os_system, r"it references os\.system"),
        "class.pth": (torch_zip_with_pickle(pickle.dumps({"delta": published.Conversion()}, protocol=2)),
                      r"it references uap_core\.published\.Conversion"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        for load in (lambda: load_uap(tmp_path / name), lambda: load_uap_bytes(data, name)):
            with pytest.raises(ArtifactError, match="refused to load " + name + ": it is not a plain tensor file "
                                                    + "[(]" + message):
                load()
        assert not marker.exists(), name


def test_malformed_torch_files_are_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    torch.save(torch.zeros(3, 4, 4), buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as archive:
        pkl = archive.read("archive/data.pkl")
    no_storage = torch_zip_with_pickle(pkl)  # the tensor's bytes are missing
    with pytest.raises(ArtifactError, match="storage 0 is missing"):
        load_uap_bytes(no_storage, "a.pth")
    with pytest.raises(ArtifactError, match="plain Python pickle, not a torch.save file"):
        load_uap_bytes(pickle.dumps([1, 2, 3], protocol=2), "list.pt")
    with pytest.raises(ArtifactError, match="not a readable PyTorch file"):
        load_uap_bytes(b"\x80\x02" + b"\xff" * 40, "junk.pt")
    script = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(torch.nn.Identity()), str(script))
    with pytest.raises(ArtifactError, match="TorchScript model, not a perturbation"):
        load_uap(script)


# ---------------------------------------------------------------------------------------------------- uses
def test_library_import_keeps_the_conversion_record(tmp_path: Path) -> None:
    r = rng_array((32, 32, 3), 8.0, seed=4)
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"r": r})
    lib = UAPLibrary(tmp_path / "lib")
    entry = lib.import_bytes("paper", buf.getvalue(), "CaffeNet.mat")
    assert entry.error is None and entry.metadata["imported_from"] == "CaffeNet.mat"
    assert entry.metadata["published"]["source_layout"] == "WHC"
    assert torch.equal(lib.load("paper").delta, pixel(r.transpose(2, 1, 0)))


def test_cli_evaluates_a_published_uap_on_lite0(tmp_path: Path, lite0, capsys) -> None:
    r = rng_array((SIDE, SIDE, 3), 10.0, seed=5)
    path = tmp_path / "VGG-16.mat"
    scipy.io.savemat(path, {"r": r})
    assert main(["evaluate", "--uap", str(path), "--model", "efficientnet_lite0", "--images", "samples",
                 "--limit", "8", "--device", "cpu", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # the same measurement made here from the array converted by hand
    images = images_for(lite0, "samples", 8)
    expected = evaluate(lite0, images.pixels, pixel(r.transpose(2, 1, 0)), images.labels)
    assert summary["fooling_ratio"] == pytest.approx(expected.fooling_ratio)
    assert summary["images"] == images.source and 0 <= summary["fooling_ratio"] <= 1
