"""Tests of uap_core.artifacts (save/load of perturbations) and uap_core.library (the folder of saved UAPs)."""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from uap_core.jsonable import jsonable as plain_json
from uap_core import atomic
from uap_core.artifacts import (
    FORMAT_VERSION,
    load_uap,
    load_uap_bytes,
    perturbation_png,
    save_uap,
    uap_to_bytes,
)
from uap_core.errors import ArtifactError, ParameterError
from uap_core.library import LibraryEntry, UAPLibrary, safe_name

EPS = 10 / 255
H, W = 16, 20


def make_delta(seed: int = 0, h: int = H, w: int = W, eps: float = EPS) -> torch.Tensor:
    """A (3, h, w) perturbation with entries uniform in [-eps, eps]."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(3, h, w, generator=g) * 2 - 1) * eps


METADATA = {
    "model": "cifar_resnet20",
    "algorithm": "sgd",
    "params": {"steps": 10, "lr": 0.005, "betas": (0.9, 0.999)},
    "eps": EPS,
    "norm": "linf",
    "seed": 0,
    "image_source": "cifar10/test[:256]",
    "history": {"fooling_rate": [0.1, 0.25, np.float32(0.5)], "step": np.arange(3)},
}


def jsonable(obj: dict) -> dict:
    """What a metadata dict looks like after a JSON round trip."""
    return json.loads(json.dumps(plain_json(obj)))


def files_in(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


class Evil:
    """A pickle payload: unpickling it calls exec(), which creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


class SimulatedKill(BaseException):
    """Stands in for the process being killed (not an Exception: nothing should swallow it)."""


# ----------------------------------------------------------------------------------------------------------
# Round trip and PNG
# ----------------------------------------------------------------------------------------------------------


def test_round_trip(tmp_path: Path) -> None:
    delta = make_delta()
    path = save_uap(delta, METADATA, tmp_path / "uap")
    assert path == tmp_path / "uap.safetensors"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["uap.json", "uap.png", "uap.safetensors"]

    art = load_uap(path)
    assert art.path == path
    assert art.delta.dtype == torch.float32 and art.delta.shape == (3, H, W)
    assert torch.equal(art.delta, delta)

    meta = art.metadata
    for key, value in jsonable(METADATA).items():
        assert meta[key] == value
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["shape"] == [3, H, W]
    assert meta["linf"] == pytest.approx(float(delta.abs().max()))
    assert meta["l2"] == pytest.approx(float(delta.norm()), rel=1e-6)
    assert datetime.fromisoformat(meta["created"]).tzinfo is not None
    assert set(meta["library_versions"]) == {"torch", "torchvision", "numpy", "safetensors", "python"}
    assert json.loads((tmp_path / "uap.json").read_text(encoding="utf-8")) == meta

    with safetensors.safe_open(str(path), "pt") as f:
        assert list(f.keys()) == ["delta"]
        assert f.metadata() == {"format": "uap-explorer", "format_version": "1"}

    with Image.open(tmp_path / "uap.png") as img:
        img.load()
        assert img.mode == "RGB" and img.size == (W, H)
        assert img.text["Description"].startswith("amplified ×")


def test_suffix_kept_and_dotted_stems(tmp_path: Path) -> None:
    path = save_uap(make_delta(), {}, tmp_path / "run.v2.safetensors", png=False)
    assert path.name == "run.v2.safetensors"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.v2.json", "run.v2.safetensors"]
    assert load_uap(path).metadata["shape"] == [3, H, W]


def test_png_false_removes_stale_preview(tmp_path: Path) -> None:
    save_uap(make_delta(), {}, tmp_path / "u")
    save_uap(make_delta(1), {}, tmp_path / "u", png=False)
    assert not (tmp_path / "u.png").exists()


def test_png_centre_reflects_scale(tmp_path: Path) -> None:
    delta = torch.zeros(3, H, W)
    delta[:, 0, 0] = EPS  # the largest entry
    delta[:, H // 2, W // 2] = EPS / 2  # the centre: half of it
    png, scale = perturbation_png(delta)
    assert scale == pytest.approx(0.5 / EPS)
    with Image.open(io.BytesIO(png)) as img:
        pixels = np.asarray(img.convert("RGB"))
        assert img.text["Description"] == f"amplified ×{scale:.1f}: grey = 0"
    assert pixels.shape == (H, W, 3)
    assert tuple(pixels[H // 2, W // 2]) == (191, 191, 191)  # 0.5 + (eps/2)·(0.5/eps) = 0.75
    assert tuple(pixels[0, 0]) == (255, 255, 255)  # the largest entry reaches the edge
    assert tuple(pixels[1, 1]) == (128, 128, 128)  # zero is mid-grey

    png, scale = perturbation_png(delta, amplify=10.0)
    assert scale == 10.0
    with Image.open(io.BytesIO(png)) as img:
        assert tuple(np.asarray(img)[H // 2, W // 2]) == (round((0.5 + 10 * EPS / 2) * 255),) * 3
        assert img.text["Description"] == "amplified ×10.0: grey = 0"

    # The saved preview is the same image.
    save_uap(delta, {}, tmp_path / "c")
    with Image.open(tmp_path / "c.png") as img:
        assert tuple(np.asarray(img)[H // 2, W // 2]) == (191, 191, 191)


def test_png_of_zero_delta_is_grey() -> None:
    png, scale = perturbation_png(torch.zeros(3, 4, 5))
    assert scale == 1.0
    with Image.open(io.BytesIO(png)) as img:
        assert (np.asarray(img) == 128).all()
    with pytest.raises(ParameterError):
        perturbation_png(torch.zeros(3, 4, 5), amplify=0)


# ----------------------------------------------------------------------------------------------------------
# Atomic writes
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def existing(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """An artifact saved in tmp_path, with the bytes of its files."""
    path = save_uap(make_delta(0), {"version": "old"}, tmp_path / "uap")
    return path, files_in(tmp_path)


def assert_old_intact(path: Path, before: dict[str, bytes]) -> None:
    assert files_in(path.parent) == before  # byte-identical, and no temp/backup files left
    art = load_uap(path)
    assert torch.equal(art.delta, make_delta(0)) and art.metadata["version"] == "old"


def test_disk_full_on_replace_keeps_old_artifact(existing, monkeypatch) -> None:
    path, before = existing

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(ArtifactError, match="could not save .*No space left"):
        save_uap(make_delta(1), {"version": "new"}, path)
    monkeypatch.undo()
    assert_old_intact(path, before)


def test_replace_failing_midway_rolls_back(existing, monkeypatch) -> None:
    """The second of three replaces fails: the first file already replaced gets its old version back."""
    path, before = existing
    real_replace = os.replace
    calls = []

    def flaky_replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky_replace)
    with pytest.raises(ArtifactError):
        save_uap(make_delta(1), {"version": "new"}, path)
    monkeypatch.undo()
    assert len(calls) >= 3  # two forward replaces, then the restore
    assert_old_intact(path, before)


def half_write_then(exc: BaseException):
    def write(fileobj, data: bytes) -> None:
        fileobj.write(data[: len(data) // 2])
        fileobj.flush()
        raise exc

    return write


def test_disk_full_mid_write_keeps_old_artifact(existing, monkeypatch) -> None:
    path, before = existing
    disk_full = OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(atomic, "_write_fully", half_write_then(disk_full))
    with pytest.raises(ArtifactError, match="No space left on device"):
        save_uap(make_delta(1), {"version": "new"}, path)
    monkeypatch.undo()
    assert_old_intact(path, before)


def test_killed_mid_write_keeps_old_artifact(existing, monkeypatch) -> None:
    path, before = existing
    monkeypatch.setattr(atomic, "_write_fully", half_write_then(SimulatedKill()))
    with pytest.raises(SimulatedKill):
        save_uap(make_delta(1), {"version": "new"}, path)
    monkeypatch.undo()
    assert_old_intact(path, before)


def test_killed_during_fsync_of_new_artifact_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    def killed(fd):
        raise SimulatedKill()

    monkeypatch.setattr(os, "fsync", killed)
    with pytest.raises(SimulatedKill):
        save_uap(make_delta(), {}, tmp_path / "fresh")
    assert list(tmp_path.iterdir()) == []


def test_unserialisable_metadata_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="JSON"):
        save_uap(make_delta(), {"model": object()}, tmp_path / "u")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------------------------------------------

BAD_TENSORS = {
    "2-D": torch.zeros(H, W),
    "4 channels": torch.zeros(4, H, W),
    "batch of 2": torch.zeros(2, 3, H, W),
    "channels last": torch.zeros(H, W, 3),
    "empty": torch.zeros(3, 0, W),
    "integer": torch.zeros(3, H, W, dtype=torch.int64),
    "uint8": torch.zeros(3, H, W, dtype=torch.uint8),
    "nan": torch.zeros(3, H, W).index_fill_(1, torch.tensor([3]), float("nan")),
    "inf": torch.zeros(3, H, W).index_fill_(2, torch.tensor([0]), float("inf")),
}


@pytest.mark.parametrize("kind", sorted(BAD_TENSORS))
def test_bad_tensors_refused_on_save_and_load(tmp_path: Path, kind: str) -> None:
    bad = BAD_TENSORS[kind]
    with pytest.raises(ArtifactError):
        save_uap(bad, {}, tmp_path / "bad")
    assert list(tmp_path.iterdir()) == []
    safetensors.torch.save_file({"delta": bad.contiguous()}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ArtifactError) as info:
        load_uap(tmp_path / "bad.safetensors")
    message = str(info.value)
    expected = {"integer": "int64", "uint8": "uint8", "nan": "NaN", "inf": "infinite", "empty": "empty"}
    assert expected.get(kind, "3×H×W") in message


def test_load_converts_dtypes_and_squeezes_batch(tmp_path: Path) -> None:
    delta = make_delta()
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        safetensors.torch.save_file({"delta": delta.to(dtype)[None]}, str(tmp_path / "d.safetensors"))
        art = load_uap(tmp_path / "d.safetensors")
        assert art.delta.dtype == torch.float32 and art.delta.shape == (3, H, W)
        assert torch.allclose(art.delta, delta, atol=1e-2 * EPS)


def test_fp64_overflowing_fp32_is_refused(tmp_path: Path) -> None:
    huge = torch.full((3, 2, 2), 1e300, dtype=torch.float64)
    safetensors.torch.save_file({"delta": huge}, str(tmp_path / "d.safetensors"))
    with pytest.raises(ArtifactError, match="infinite"):
        load_uap(tmp_path / "d.safetensors")


def test_eps_budget_linf(tmp_path: Path) -> None:
    delta = torch.zeros(3, H, W)
    delta[1, 2, 3] = -0.05
    path = save_uap(delta, {}, tmp_path / "u")
    with pytest.raises(ArtifactError) as info:
        load_uap(path, eps=0.04)
    assert "0.05" in str(info.value) and "0.04" in str(info.value)
    load_uap(path, eps=0.05)  # exactly at the budget
    load_uap(path, eps=0.05 * (1 - 1e-5))  # within the float tolerance


def test_eps_budget_l2(tmp_path: Path) -> None:
    delta = torch.zeros(3, H, W)
    delta[0, 0, 0], delta[2, 5, 5] = 3.0 / 255, 4.0 / 255  # L2 = 5/255, L∞ = 4/255
    path = save_uap(delta, {}, tmp_path / "u")
    with pytest.raises(ArtifactError, match="L2 norm is 0.0196"):
        load_uap(path, eps=4.5 / 255, norm="l2")
    load_uap(path, eps=4.5 / 255, norm="linf")
    load_uap(path, eps=5 / 255, norm="l2")
    with pytest.raises(ParameterError):
        load_uap(path, eps=1.0, norm="l1")
    with pytest.raises(ParameterError):
        load_uap(path, eps=-1.0)


def test_size_mismatch_and_resize(tmp_path: Path) -> None:
    delta = make_delta()
    path = save_uap(delta, {"model": "m"}, tmp_path / "u")
    with pytest.raises(ArtifactError) as info:
        load_uap(path, expected_size=(32, 32))
    message = str(info.value)
    assert f"3×{H}×{W}" in message and "3×32×32" in message and "resize=True" in message

    for size in ((32, 32), (8, 10), (8, 40)):
        art = load_uap(path, expected_size=size, resize=True, eps=EPS)  # resampling stays within the L∞ ball
        assert art.delta.shape == (3, *size) and art.delta.dtype == torch.float32
        assert art.metadata["resized_from"] == [H, W] and art.metadata["model"] == "m"
    assert "resized_from" not in load_uap(path, expected_size=(H, W)).metadata


def payloads(marker: Path) -> dict[str, bytes]:
    """Malicious files: a raw pickle and a torch.save zip, both running exec() when unpickled."""
    buf = io.BytesIO()
    torch.save({"delta": Evil(marker)}, buf)
    return {"raw pickle": pickle.dumps(Evil(marker)), "torch zip": buf.getvalue()}


def test_payload_is_live(tmp_path: Path) -> None:
    """Sanity check that the payload used below really runs when unpickled unsafely."""
    marker = tmp_path / "ran"
    pickle.loads(payloads(marker)["raw pickle"])
    assert marker.exists()


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".safetensors", ".bin"])
@pytest.mark.parametrize("kind", ["raw pickle", "torch zip"])
def test_malicious_pickles_never_run(tmp_path: Path, suffix: str, kind: str) -> None:
    marker = tmp_path / "pwned"
    data = payloads(marker)[kind]
    path = tmp_path / f"evil{suffix}"
    path.write_bytes(data)
    with pytest.raises(ArtifactError) as from_file:
        load_uap(path)
    with pytest.raises(ArtifactError) as from_bytes:
        load_uap_bytes(data, path.name)
    assert not marker.exists()
    for info in (from_file, from_bytes):
        if suffix == ".safetensors":
            assert "not a safetensors file" in str(info.value)
        else:
            assert "refused" in str(info.value)


def test_torch_files_with_plain_tensors_load(tmp_path: Path) -> None:
    delta = make_delta()
    torch.save(delta, tmp_path / "a.pt")
    torch.save({"delta": delta, "note": "x"}, tmp_path / "b.pth")
    for name in ("a.pt", "b.pth"):
        art = load_uap(tmp_path / name)
        assert torch.equal(art.delta, delta) and art.metadata == {"metadata_missing": True}
    torch.save({"a": delta, "b": delta}, tmp_path / "c.pt")
    with pytest.raises(ArtifactError, match="not a perturbation tensor"):
        load_uap(tmp_path / "c.pt")


def test_npy(tmp_path: Path) -> None:
    delta = make_delta()
    np.save(tmp_path / "d.npy", delta.numpy().astype(">f8"))  # big-endian float64
    assert torch.allclose(load_uap(tmp_path / "d.npy").delta, delta)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(ArtifactError, match="object array"):
        load_uap(tmp_path / "obj.npy")
    np.save(tmp_path / "int.npy", np.zeros((3, 4, 4), dtype=np.int32))
    with pytest.raises(ArtifactError, match="int32"):
        load_uap(tmp_path / "int.npy")


def test_missing_json_loads_with_note(tmp_path: Path) -> None:
    path = save_uap(make_delta(), {"model": "m"}, tmp_path / "u")
    (tmp_path / "u.json").unlink()
    art = load_uap(path)
    assert art.metadata == {"metadata_missing": True}
    assert torch.equal(art.delta, make_delta())


def test_malformed_json_is_refused(tmp_path: Path) -> None:
    path = save_uap(make_delta(), {"model": "m"}, tmp_path / "u")
    (tmp_path / "u.json").write_text('{"model": "m",', encoding="utf-8")
    with pytest.raises(ArtifactError, match=r"u\.json is not valid JSON"):
        load_uap(path)
    (tmp_path / "u.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ArtifactError, match="JSON object"):
        load_uap(path)


def test_garbage_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no such file"):
        load_uap(tmp_path / "nope.safetensors")
    (tmp_path / "g.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ArtifactError, match="not a safetensors file"):
        load_uap(tmp_path / "g.safetensors")
    # A plausible header whose data section is truncated.
    good = uap_to_bytes(make_delta(), {})
    with pytest.raises(ArtifactError, match="not a valid safetensors file"):
        load_uap_bytes(good[:-10], "t.safetensors")
    for data, name in [(b"hello", "x.txt"), (b"", "x.pt"), (b"garbage!!", "x.pt"), (b"garbage", "x.npy")]:
        with pytest.raises(ArtifactError):
            load_uap_bytes(data, name)


def test_safetensors_without_delta_key(tmp_path: Path) -> None:
    safetensors.torch.save_file({"other": make_delta()}, str(tmp_path / "o.safetensors"))
    assert load_uap(tmp_path / "o.safetensors").delta.shape == (3, H, W)  # a single tensor is accepted
    safetensors.torch.save_file({"a": make_delta(), "b": make_delta()}, str(tmp_path / "two.safetensors"))
    with pytest.raises(ArtifactError, match="no tensor named 'delta'"):
        load_uap(tmp_path / "two.safetensors")


def test_newer_format_version_refused(tmp_path: Path) -> None:
    path = save_uap(make_delta(), {}, tmp_path / "u")
    meta = json.loads((tmp_path / "u.json").read_text())
    meta["format_version"] = FORMAT_VERSION + 1
    (tmp_path / "u.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="newer"):
        load_uap(path)


# ----------------------------------------------------------------------------------------------------------
# Bytes for downloads / uploads
# ----------------------------------------------------------------------------------------------------------


def test_bytes_round_trip(tmp_path: Path) -> None:
    delta = make_delta(3)
    data = uap_to_bytes(delta, METADATA)
    art = load_uap_bytes(data, "download.safetensors", expected_size=(H, W), eps=EPS)
    assert art.path is None
    assert torch.equal(art.delta, delta)
    for key, value in jsonable(METADATA).items():
        assert art.metadata[key] == value
    assert art.metadata["shape"] == [3, H, W] and art.metadata["format_version"] == FORMAT_VERSION
    assert load_uap_bytes(data, "no-suffix").metadata["model"] == METADATA["model"]  # dispatch on magic

    # Saved to disk without a sidecar, the embedded metadata is used.
    (tmp_path / "dl.safetensors").write_bytes(data)
    assert load_uap(tmp_path / "dl.safetensors").metadata["model"] == METADATA["model"]


def test_bytes_of_other_formats() -> None:
    delta = make_delta()
    buf = io.BytesIO()
    np.save(buf, delta.numpy())
    assert torch.equal(load_uap_bytes(buf.getvalue(), "u.npy").delta, delta)
    buf = io.BytesIO()
    torch.save(delta, buf)
    art = load_uap_bytes(buf.getvalue(), "u.pt", expected_size=(8, 8), resize=True)
    assert art.delta.shape == (3, 8, 8) and art.metadata == {"metadata_missing": True, "resized_from": [H, W]}


# ----------------------------------------------------------------------------------------------------------
# Library
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def lib(tmp_path: Path) -> UAPLibrary:
    return UAPLibrary(tmp_path / "lib")


def all_files(folder: Path) -> list[Path]:
    return [Path(d) / f for d, _, files in os.walk(folder) for f in files]


def test_library_basic_operations(lib: UAPLibrary) -> None:
    assert lib.root.is_dir() and lib.list() == []
    first = lib.save("first", make_delta(0), {"model": "a"})
    assert isinstance(first, LibraryEntry)
    assert first.name == "first" and first.shape == (3, H, W) and first.error is None
    assert first.metadata["model"] == "a" and first.path == lib.root / "first.safetensors"
    lib.save("second", make_delta(1), {"model": "b"})
    os.utime(lib.path_of("first"), (1_000_000_000, 1_000_000_000))  # make "first" older
    assert [e.name for e in lib.list()] == ["second", "first"]
    assert torch.equal(lib.load("first").delta, make_delta(0))
    assert lib.load("first", expected_size=(8, 8), resize=True).delta.shape == (3, 8, 8)

    with pytest.raises(ParameterError, match="already exists"):
        lib.save("first", make_delta(2), {})
    lib.save("first", make_delta(2), {"model": "c"}, overwrite=True)
    assert lib.load("first").metadata["model"] == "c"

    renamed = lib.rename("first", "renamed")
    assert renamed.name == "renamed" and renamed.metadata["model"] == "c"
    assert sorted(p.name for p in lib.root.iterdir()) == [
        "renamed.json", "renamed.png", "renamed.safetensors",
        "second.json", "second.png", "second.safetensors",
    ]  # fmt: skip
    with pytest.raises(ParameterError, match="already exists"):
        lib.rename("renamed", "second")
    with pytest.raises(ArtifactError, match="no UAP named"):
        lib.rename("first", "whatever")

    lib.delete("renamed")
    assert [e.name for e in lib.list()] == ["second"]
    assert sorted(p.name for p in lib.root.iterdir()) == ["second.json", "second.png", "second.safetensors"]
    with pytest.raises(ArtifactError, match="no UAP named"):
        lib.delete("renamed")
    with pytest.raises(ArtifactError, match="no UAP named"):
        lib.load("renamed")


HOSTILE_NAMES = {
    "../../evil": "evil",
    "/tmp/abs": "abs",
    "a/b/c": "c",
    "..\\..\\win": "win",
    "x" * 500: "x" * 80,
    "naïve ünïcode name": "naïve ünïcode name",
    "CON": "CON_",
    "nul\x00byte\x07": "nulbyte",
    " spaced  out . ": "spaced out",
}


def test_safe_name() -> None:
    for name, expected in HOSTILE_NAMES.items():
        assert safe_name(name) == expected
    for name in ("", "  ", "..", ".", "/", "../..", "\x00\x01", "???"):
        with pytest.raises(ParameterError):
            safe_name(name)


def test_library_never_writes_outside_root(tmp_path: Path, lib: UAPLibrary) -> None:
    for i, name in enumerate([*HOSTILE_NAMES, "", "  ", "..", "../.."]):
        try:
            entry = lib.save(name, make_delta(i), {"i": i})
        except ParameterError:
            continue
        assert entry.path.parent == lib.root
        assert entry.name == safe_name(name)
    lib.rename("evil", "../../../renamed/../x")
    lib.import_bytes("/etc/imported", uap_to_bytes(make_delta(), {}), "../../up.safetensors")
    files = all_files(tmp_path)
    assert files and all(f.parent == lib.root for f in files)
    assert not (lib.root / ".." / ".." / "evil.safetensors").resolve().exists()
    names = {e.name for e in lib.list()}
    assert names == {*(v for k, v in HOSTILE_NAMES.items() if v != "evil"), "x", "imported"}
    assert all(e.error is None for e in lib.list())


def test_library_rename_that_fails_midway_moves_back(lib: UAPLibrary, monkeypatch) -> None:
    """A rename moves .safetensors, .json, .png in turn; when the .png's target appears meanwhile, the files already
    moved go back and the entry stays loadable under its old name (uap_core.atomic.move_all_no_clobber)."""
    lib.save("first", make_delta(3), {"model": "a"})
    real_move = atomic.move_no_clobber

    def png_target_appears(src: Path, dst: Path) -> None:
        if dst.name == "renamed.png":
            dst.write_bytes(b"someone else's")
        real_move(src, dst)

    monkeypatch.setattr(atomic, "move_no_clobber", png_target_appears)
    with pytest.raises(ParameterError, match="renamed.png appeared meanwhile"):
        lib.rename("first", "renamed")
    monkeypatch.undo()
    assert sorted(p.name for p in lib.root.iterdir()) == [
        "first.json", "first.png", "first.safetensors", "renamed.png",
    ]  # fmt: skip
    assert (lib.root / "renamed.png").read_bytes() == b"someone else's"
    assert torch.equal(lib.load("first").delta, make_delta(3)) and lib.load("first").metadata["model"] == "a"


def test_library_refuses_symlink_escape(tmp_path: Path, lib: UAPLibrary) -> None:
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"precious")
    (lib.root / "link.safetensors").symlink_to(outside)
    with pytest.raises(ParameterError):
        lib.save("link", make_delta(), {}, overwrite=True)
    assert outside.read_bytes() == b"precious"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(max_size=120))
def test_safe_name_property(lib: UAPLibrary, name: str) -> None:
    try:
        cleaned = safe_name(name)
    except ParameterError:
        return
    assert cleaned and len(cleaned) <= 80 and len(cleaned.encode()) <= 200
    assert not any(c in cleaned for c in "/\\\x00") and not cleaned.startswith(".")
    assert lib.path_of(name).parent == lib.root
    assert safe_name(cleaned) == cleaned  # idempotent


def test_corrupt_entries_are_listed_with_errors(lib: UAPLibrary) -> None:
    lib.save("good", make_delta(), {"model": "m"})
    lib.save("badjson", make_delta(), {"model": "m"})
    (lib.root / "badjson.json").write_text("{not json", encoding="utf-8")
    (lib.root / "garbage.safetensors").write_bytes(b"this is not a tensor file")
    (lib.root / ".good.safetensors.new-abc.tmp").write_bytes(b"leftover of a killed save")
    entries = {e.name: e for e in lib.list()}
    assert set(entries) == {"good", "badjson", "garbage"}
    assert entries["good"].error is None and entries["good"].shape == (3, H, W)
    assert "not valid JSON" in entries["badjson"].error and entries["badjson"].shape is None
    assert "not a safetensors file" in entries["garbage"].error
    lib.delete("garbage")  # a corrupt entry can still be removed
    (lib.root / "badjson.json").write_text("{}", encoding="utf-8")  # a fixed sidecar is picked up
    assert {e.name: e.error for e in lib.list()} == {"good": None, "badjson": None}


def test_hand_copied_file_names_are_usable(lib: UAPLibrary) -> None:
    save_uap(make_delta(), {}, lib.root / "UAP (resnet50)")
    (entry,) = lib.list()
    assert entry.name == "UAP (resnet50)" and entry.error is None
    assert lib.load(entry.name).delta.shape == (3, H, W)
    lib.rename(entry.name, "tidy")
    assert [e.name for e in lib.list()] == ["tidy"]


def test_import_bytes(tmp_path: Path, lib: UAPLibrary) -> None:
    lib.save("existing", make_delta(), {})
    before = files_in(lib.root)
    marker = tmp_path / "pwned"
    bad_uploads = [
        (b"garbage", "up.safetensors"),
        (b"garbage", "up.pt"),
        (uap_to_bytes(make_delta(), {})[:100], "trunc.safetensors"),
        (payloads(marker)["torch zip"], "evil.pt"),
        (payloads(marker)["raw pickle"], "evil.safetensors"),
    ]
    for data, filename in bad_uploads:
        with pytest.raises(ArtifactError):
            lib.import_bytes("new", data, filename)
    with pytest.raises(ParameterError, match="already exists"):
        lib.import_bytes("existing", uap_to_bytes(make_delta(), {}), "x.safetensors")
    assert files_in(lib.root) == before and not marker.exists()

    buf = io.BytesIO()
    np.save(buf, make_delta(5).numpy())
    entry = lib.import_bytes("from numpy", buf.getvalue(), "mine.npy")
    assert entry.error is None and entry.metadata["imported_from"] == "mine.npy"
    assert torch.equal(lib.load("from numpy").delta, make_delta(5))
