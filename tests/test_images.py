"""Tests of uap_core.images: real decoding of real and deliberately broken files."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from uap_core.errors import ImageSourceError, ParameterError
from uap_core.images import (ImageSet, SkippedImage, decode_image, imagenet_wnids, load_folder, load_images,
                             load_npz, load_samples, load_uploads)

from conftest import shared_path


def shared_file(rel: str) -> Path:
    return shared_path("data/" + rel)


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def photo(w: int = 60, h: int = 40) -> Image.Image:
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None]
    a[..., 1] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]
    a[..., 2] = np.random.default_rng(w * h).integers(0, 256, (h, w), dtype=np.uint8)  # noise: incompressible
    return Image.fromarray(a)


def png_header(w: int, h: int) -> bytes:
    """A PNG whose header claims w×h pixels (1-bit grey) with a tiny, incomplete IDAT: costs no memory."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# ---------------------------------------------------------------- real sources

def test_samples_are_embedded_and_labelled():
    s = load_samples(224, 256)
    assert len(s) >= 20 and s.pixels.shape == (len(s), 3, 224, 224) and s.pixels.dtype == torch.uint8
    assert s.labels.dtype == torch.int64 and s.source == "embedded samples"
    fool = [(n, int(l)) for n, l in zip(s.names, s.labels) if n.startswith("foolbox/")]
    assert len(fool) == 20
    for name, label in fool:
        assert label == int(Path(name).stem.rsplit("_", 1)[1])
    assert all(int(l) == -1 for n, l in zip(s.names, s.labels) if n.startswith("skimage/"))
    assert s.pixels.float().std() > 20  # real photos, not blank
    ten = load_samples(32, 32, class_names=[str(i) for i in range(10)])
    assert (ten.labels == -1).all() and not ten.has_labels


def test_samples_are_cached():
    a, b = load_samples(64, 72), load_samples(64, 72)
    assert a.pixels is b.pixels and a.names == b.names and a.names is not b.names


def test_imagenet_wnids():
    w = imagenet_wnids()
    assert len(w) == 1000 and w == sorted(w) and w[0] == "n01440764"


def test_shared_imagenet_folder():
    folder = shared_file("imagenet-samples-200")
    s = load_images(folder, 224, 256)
    assert len(s) == 200 and s.pixels.shape == (200, 3, 224, 224) and not s.skipped
    wnids = imagenet_wnids()
    for name, label in zip(s.names, s.labels.tolist()):
        assert label == wnids.index(name.split("_")[0])
    assert s.labels[s.names.index("n01440764_tench.JPEG")] == 0
    assert load_images(folder, 224, 256, limit=7).names == s.names[:7]


def test_shared_cifar_npz():
    s = load_images(shared_file("cifar10-test-2000.npz"), 32, 32)
    assert s.pixels.shape == (2000, 3, 32, 32) and s.pixels.dtype == torch.uint8
    assert s.labels.shape == (2000,) and set(s.labels.tolist()) == set(range(10))
    big = load_npz(shared_file("cifar10-test-2000.npz"), 48, 56)
    assert big.pixels.shape == (2000, 3, 48, 48)


def test_decode_matches_torchvision_reference():
    from torchvision import transforms as T
    img = photo(500, 375)
    ref = T.Compose([T.Resize(256), T.CenterCrop(224), T.PILToTensor()])(img)
    ours = decode_image(encode(img), "p.png", 224, 256)
    assert (ours.int() - ref.int()).abs().float().mean() < 1.0


# ---------------------------------------------------------------- npz validation

@pytest.mark.parametrize("arrays, expected", [
    ({"images": np.zeros((2, 8, 8, 3), np.uint8), "y": np.zeros(2, np.int64)}, "'x'"),
    ({"x": np.zeros((2, 8, 8), np.uint8), "y": np.zeros(2, np.int64)}, "4-D"),
    ({"x": np.zeros((2, 8, 8, 4), np.uint8), "y": np.zeros(2, np.int64)}, "4-D"),
    ({"x": np.full((2, 8, 8, 3), 2.5, np.float32), "y": np.zeros(2, np.int64)}, "[0, 1]"),
    ({"x": np.zeros((3, 8, 8, 3), np.uint8), "y": np.zeros(2, np.int64)}, "must match"),
    ({"x": np.zeros((2, 8, 8, 3), np.uint8), "y": np.zeros(2, np.float32)}, "integer"),
    ({"x": np.zeros((2, 8, 8, 3), np.uint8), "y": np.array([1, "a"], dtype=object)}, "objects"),
], ids=["keys", "ndim", "channels", "float-range", "lengths", "float-labels", "object"])
def test_bad_npz(tmp_path, arrays, expected):
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)
    with pytest.raises(ImageSourceError) as e:
        load_images(p, 8, 8)
    assert expected in str(e.value)


def test_npz_layouts_and_float(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", x=x, y=np.arange(4))
    np.savez(tmp_path / "b.npz", x=x.transpose(0, 3, 1, 2).copy(), y=np.arange(4))
    np.savez(tmp_path / "c.npz", x=x / 255.0, y=np.arange(4))
    a, b, c = (load_npz(tmp_path / f"{k}.npz", 8, 8) for k in "abc")
    assert torch.equal(a.pixels, b.pixels) and torch.equal(a.pixels, c.pixels)
    assert torch.equal(a.pixels[0], torch.from_numpy(x[0]).permute(2, 0, 1))
    with pytest.raises(ImageSourceError):
        (tmp_path / "not.npz").write_bytes(b"hello")
        load_images(tmp_path / "not.npz", 8, 8)


# ---------------------------------------------------------------- decoding robustness

@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b"just some text, not a picture\n", "not a recognised image"),
    (encode(photo(), "JPEG")[:300], "truncated"),
    (encode(photo())[:200], "cannot be decoded"),
], ids=["zero-bytes", "text", "truncated-jpeg", "truncated-png"])
def test_undecodable(data, reason):
    with pytest.raises(ImageSourceError) as e:
        decode_image(data, "broken.jpg", 32, 32)
    assert "broken.jpg" in str(e.value) and reason in str(e.value).lower()


def test_bomb_guard():
    with pytest.raises(ImageSourceError, match="too large: 20000×20000 pixels"):
        decode_image(png_header(20000, 20000), "bomb.png", 32, 32)
    with pytest.raises(ImageSourceError, match=r"too large: 9000×8000 pixels \(limit 64 MP\)"):
        decode_image(png_header(9000, 8000), "big.png", 32, 32)


def test_colour_modes():
    red = decode_image(encode(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG"), "cmyk.jpg", 16, 16)
    assert red[0].float().mean() > 200 and red[1].float().mean() < 60 and red[2].float().mean() < 60
    g16 = Image.fromarray(np.full((20, 20), 32768, np.uint16))
    assert g16.mode == "I;16"
    mid = decode_image(encode(g16), "grey16.png", 16, 16)
    assert (mid.int() - 128).abs().max() <= 2
    grey = decode_image(encode(Image.new("L", (20, 20), 77)), "grey.png", 16, 16)
    assert (grey == 77).all()
    rgba = Image.new("RGBA", (20, 20), (255, 0, 0, 0))
    assert (decode_image(encode(rgba), "clear.png", 16, 16) == 255).all()
    la = Image.new("LA", (20, 20), (0, 0))
    assert (decode_image(encode(la), "la.png", 16, 16) == 255).all()
    pal = Image.new("P", (20, 20), 1)
    pal.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    green = decode_image(encode(pal), "pal.png", 16, 16)
    assert (green[1] == 200).all() and (green[0] == 0).all()
    pal.info["transparency"] = 1
    assert (decode_image(encode(pal, transparency=1), "palt.png", 16, 16) == 255).all()
    bw = decode_image(encode(Image.new("1", (20, 20), 1)), "bw.png", 16, 16)
    assert (bw == 255).all()
    for fmt in ("WEBP", "BMP"):
        out = decode_image(encode(photo(), fmt), "x." + fmt.lower(), 24, 24)
        assert out.shape == (3, 24, 24)


def test_exif_orientation():
    a = np.zeros((20, 40, 3), np.uint8)  # stored landscape: left red, right blue
    a[:, :20, 0] = 255
    a[:, 20:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90° clockwise: left (red) goes to the top
    out = decode_image(encode(Image.fromarray(a), "JPEG", exif=exif.tobytes(), quality=95), "rot.jpg", 20, 20)
    top, bottom = out[:, 1].float().mean(1), out[:, -2].float().mean(1)
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60


def test_tiny_and_elongated():
    one = decode_image(encode(Image.new("RGB", (1, 1), (10, 20, 30))), "1.png", 224, 256)
    assert one.shape == (3, 224, 224) and one[:, 0, 0].tolist() == [10, 20, 30]
    strip = decode_image(encode(photo(3000, 10)), "strip.png", 32, 40)
    assert strip.shape == (3, 32, 32)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefix=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", encode(photo(8, 8))[:40],
                               encode(photo(8, 8), "JPEG")[:120]]),
       body=st.binary(max_size=400))
def test_random_bytes_never_crash(prefix, body):
    try:
        out = decode_image(prefix + body, "fuzz", 16, 16)
    except ImageSourceError:
        return
    assert out.shape == (3, 16, 16) and out.dtype == torch.uint8


# ---------------------------------------------------------------- folders and uploads

def test_folder_mixed_good_and_bad(tmp_path):
    root = tmp_path / "ünï cødé dir"
    (root / "sub dir").mkdir(parents=True)
    (root / "good 1.png").write_bytes(encode(photo()))
    (root / "sub dir" / "gööd 2.JPG").write_bytes(encode(photo(), "JPEG"))
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.jpeg").write_text("hello")
    (root / "cut.png").write_bytes(encode(photo())[:150])
    (root / "notes.txt").write_text("ignored")
    (root / ".hidden.png").write_bytes(b"")
    s = load_images(str(root / "sub dir" / ".." / "."), 32, 36)
    assert s.names == ["good 1.png", "sub dir/gööd 2.JPG"] and s.pixels.shape == (2, 3, 32, 32)
    assert {k.name for k in s.skipped} == {"cut.png", "empty.jpg", "text.jpeg"}
    assert all(isinstance(k, SkippedImage) and k.reason for k in s.skipped)
    assert s.source == f"folder {root.resolve()}" and not s.has_labels
    single = load_images(root / "sub dir" / "gööd 2.JPG", 32, 36)
    assert len(single) == 1 and torch.equal(single.pixels[0], s.pixels[1])


def test_folder_errors(tmp_path):
    with pytest.raises(ImageSourceError, match=r"\.png"):
        load_folder(tmp_path, 32, 32)
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(ImageSourceError, match="accepted extensions"):
        load_images(tmp_path, 32, 32)
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(ImageSourceError, match="no decodable images.*1 files skipped.*bad.png"):
        load_images(tmp_path, 32, 32)
    with pytest.raises(ImageSourceError, match="no such file or folder"):
        load_images(tmp_path / "missing", 32, 32)
    with pytest.raises(ParameterError):
        load_images(tmp_path, 32, 16)


def test_folder_labels(tmp_path):
    img = encode(photo())
    for rel in ["n01443537_goldfish.png", "n01484850/a.png", "cat/b.png", "Big_Dog/c.png", "1/d.png", "zz/e.png"]:
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_bytes(img)
    names = ["cat", "big dog", "bird"]
    got = dict(zip(load_folder(tmp_path, 16, 16, names).names, load_folder(tmp_path, 16, 16, names).labels.tolist()))
    assert got == {"n01443537_goldfish.png": -1, "n01484850/a.png": -1, "cat/b.png": 0, "Big_Dog/c.png": 1,
                   "1/d.png": 1, "zz/e.png": -1}
    imnet = load_folder(tmp_path, 16, 16)
    assert dict(zip(imnet.names, imnet.labels.tolist()))["n01443537_goldfish.png"] == 1
    assert dict(zip(imnet.names, imnet.labels.tolist()))["n01484850/a.png"] == 2


def test_folder_cache_sees_changes(tmp_path):
    (tmp_path / "a.png").write_bytes(encode(photo()))
    first, again = load_folder(tmp_path, 16, 16), load_folder(tmp_path, 16, 16)
    assert first.pixels is again.pixels
    (tmp_path / "b.png").write_bytes(encode(photo()))
    assert len(load_folder(tmp_path, 16, 16)) == 2


def test_uploads():
    files = [("n01440764_tench.jpg", encode(photo(), "JPEG")), ("x.png", encode(photo())), ("bad.jpg", b"\xff\xd8")]
    s = load_uploads(files, 32, 32)
    assert s.names == ["n01440764_tench.jpg", "x.png"] and s.labels.tolist() == [0, -1]
    assert [k.name for k in s.skipped] == ["bad.jpg"] and s.source == "uploads"
    with pytest.raises(ImageSourceError):
        load_uploads([], 32, 32)
    with pytest.raises(ImageSourceError, match="no decodable"):
        load_uploads([("bad.jpg", b"")], 32, 32)


# ---------------------------------------------------------------- ImageSet

def make_set(n: int) -> ImageSet:
    pixels = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous()
    return ImageSet(pixels, torch.arange(n), [f"{i}.png" for i in range(n)], [SkippedImage("z", "r")], "test")


def test_split_and_subset():
    s = make_set(30)
    fit, held = s.split(10, 5, seed=1)
    assert len(fit) == 10 and len(held) == 5 and not set(fit.names) & set(held.names)
    assert fit.names == s.split(10, 5, seed=1)[0].names
    assert fit.names != s.split(10, 5, seed=2)[0].names
    assert fit.skipped == s.skipped and fit.source == "test"
    assert torch.equal(fit.pixels[:, 0, 0, 0].long(), fit.labels)
    for bad in [(0, 5), (5, 0), (20, 11)]:
        with pytest.raises(ParameterError, match="30"):
            s.split(*bad, seed=0)
    sub = s.subset([3, 1])
    assert sub.names == ["3.png", "1.png"] and sub.labels.tolist() == [3, 1]
    assert len(s.subset(range(4))) == 4
    f = s.as_float()
    assert f.dtype == torch.float32 and f.shape == s.pixels.shape and abs(float(f[29, 0, 0, 0]) - 29 / 255) < 1e-6


def test_augmented_views_are_crops_of_their_image():
    """A view of a picture whose left half is black and right half white: each view is a (possibly flipped)
    crop, so it holds only black, white and the edge between them; seeded, labels and names carried over."""
    pixels = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    pixels[:, :, :, 16:] = 255
    pixels[1] = 255 - pixels[1]
    images = ImageSet(pixels, torch.tensor([7, -1]), ["a.png", "b.png"], source="test")
    views = images.augmented(5, seed=3)
    assert views.pixels.shape == (10, 3, 32, 32) and views.pixels.dtype == torch.uint8
    assert views.labels.tolist() == [7] * 5 + [-1] * 5
    assert views.names[:2] == ["a.png#0", "a.png#1"] and "augmented" in views.source
    assert torch.equal(views.pixels, images.augmented(5, seed=3).pixels)
    assert not torch.equal(views.pixels, images.augmented(5, seed=4).pixels)
    for view in views.pixels:
        columns = view[0].float().mean(0)  # each column stays constant top to bottom: no vertical mixing
        assert torch.equal(view[0], view[0][:1].expand(32, -1))
        assert columns.min() <= 1 or columns.max() >= 254  # some of the picture's own black or white
    assert any(not torch.equal(v, pixels[0]) for v in views.pixels[:5])  # not all the same crop
    with pytest.raises(ParameterError, match="augment views = 0 is out of range"):
        images.augmented(0, seed=0)
