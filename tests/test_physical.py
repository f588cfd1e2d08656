"""The physical check (uap_core.physical and Inspect's "Print or show it, then photograph it"): the print-size PNG
(nearest-neighbour pixels, DPI, size in cm), the photo's labels against the clean and the digital perturbed image's
(the photo classified as it is, δ not added again), and the page's wording under AppTest. CIFAR-10 ResNet-20 on the
embedded samples at 32 px keeps it cheap. The camera itself: tests/test_browser_physical.py.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from ui_helpers import PAGES, save_test_uap

MODEL = "cifar_resnet20"
EPS = 16 / 255


@pytest.fixture(scope="module")
def cifar_setup(tmp_path_factory):
    """The model, the embedded samples at 32 px, a saved random ±16/255 δ made for the model, and the index of the
    first sample it fools digitally (with its digital report)."""
    from uap_core.images import load_samples
    from uap_core.library import UAPLibrary
    from uap_core.models import load_model
    from uap_core.report import photo_report

    library = tmp_path_factory.mktemp("physical") / "library"
    save_test_uap(library, "cifar-uap", size=32, eps=EPS, model=MODEL)
    delta = UAPLibrary(library).load("cifar-uap").delta
    model = load_model(MODEL, "cpu")
    samples = load_samples(32, 32, list(model.spec.class_names))
    reports = [photo_report(model, samples.pixels[i], delta) for i in range(len(samples))]
    index = next(i for i, r in enumerate(reports) if r.flipped and r.clean_top.labels[0] != r.perturbed_top.labels[1])
    return {"library": library, "delta": delta, "model": model, "samples": samples, "index": index,
            "digital": reports[index]}


def png(picture: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(picture.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------- the print PNG
def test_print_png_is_nearest_neighbour_at_the_stated_size_and_dpi():
    from uap_core.physical import MAX_PRINT_SIDE, print_png, print_size, screen_factor, upscale_nearest

    picture = torch.randint(0, 256, (3, 32, 48), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    size = print_size(32, 48, width_cm=8.0, dpi=150)
    assert size.factor == round(8 / 2.54 * 150 / 48) == 10  # 48 px × 10 = 480 px = 3.2 in = 8.13 cm
    assert size.pixels == (480, 320)
    assert size.inches == pytest.approx((3.2, 320 / 150))
    assert size.cm == pytest.approx((3.2 * 2.54, 320 / 150 * 2.54))
    assert "480 × 320 px" in size.describe() and "8.1 × 5.4 cm" in size.describe() and "150 DPI" in size.describe()
    image = Image.open(io.BytesIO(print_png(picture, size)))
    assert image.size == (480, 320) and image.mode == "RGB"
    assert image.info["dpi"] == pytest.approx((150, 150), abs=0.05)  # pHYs (whole pixels per metre) a printer reads
    big = torch.from_numpy(np.array(image)).permute(2, 0, 1)
    assert torch.equal(big, upscale_nearest(picture, 10))
    blocks = big.reshape(3, 32, 10, 48, 10)  # every 10×10 block is one pixel of the picture, nothing smeared
    assert torch.equal(blocks.amin(dim=(2, 4)), picture) and torch.equal(blocks.amax(dim=(2, 4)), picture)
    assert print_size(32, 48, width_cm=15.0, dpi=300).factor == 37  # 1776 px = 5.92 in = 15.04 cm

    assert print_size(224, 224, width_cm=0.1).factor == 1  # never smaller than the picture
    assert max(print_size(32, 32, width_cm=1000, dpi=600).pixels) <= MAX_PRINT_SIDE
    assert screen_factor(32, 32) == 32 and screen_factor(224, 224) == 5 and screen_factor(2000, 1000) == 1
    with pytest.raises(ValueError):
        print_png(picture[:, :16], size)


# ---------------------------------------------------------------------------------------------- the photo's labels
def same_top(a, b) -> None:
    """The same top-5 labels, the same confidences up to float rounding (batches of other sizes)."""
    assert a.labels == b.labels and a.names == b.names
    assert a.confidences == pytest.approx(b.confidences, abs=1e-5)


def test_the_photo_is_classified_as_it_is_beside_the_clean_and_digital_images(cifar_setup):
    from uap_core.evaluation import predict_logits
    from uap_core.physical import physical_report

    model, delta, digital = cifar_setup["model"], cifar_setup["delta"], cifar_setup["digital"]
    clean = cifar_setup["samples"].pixels[cifar_setup["index"]]

    copy = physical_report(model, clean, delta, digital.perturbed.clone())  # a perfect "photo": the digital image
    assert torch.equal(copy.perturbed, digital.perturbed) and torch.equal(copy.clean, clean)
    same_top(copy.photo_top, digital.perturbed_top)
    same_top(copy.perturbed_top, digital.perturbed_top)
    same_top(copy.clean_top, digital.clean_top)
    assert copy.digital_fooled and copy.photo_fooled and copy.photo_as_digital

    same = physical_report(model, clean, delta, clean.clone())  # a photo of the clean image: δ is not added to it
    same_top(same.photo_top, digital.clean_top)
    assert not same.photo_fooled and not same.photo_as_digital

    noisy = clean.clone()  # any other photo: its own labels, the model's on those pixels alone
    noisy[:, ::2] = 255 - noisy[:, ::2]
    report = physical_report(model, clean, delta, noisy)
    probabilities = predict_logits(model, noisy[None], None, "fp32")[0].softmax(-1)
    values, indices = probabilities.topk(5)
    assert report.photo_top.labels == indices.tolist()
    assert report.photo_top.confidences == pytest.approx(values.tolist(), abs=1e-5)
    assert report.photo_fooled == (indices[0] != digital.clean_top.labels[0])
    with pytest.raises(ValueError):
        physical_report(model, clean, delta, noisy[:, :16])


# ---------------------------------------------------------------------------------------------- the page
def test_inspect_physical_check_wording(cifar_setup, tmp_path, monkeypatch):
    """The section under AppTest: the digital labels, the print size, the new-image note, no camera until asked
    for; a photo that is the digital image exactly fools the model like it, a photo of the clean image does not."""
    monkeypatch.setenv("UAP_LIBRARY_DIR", str(cifar_setup["library"]))
    monkeypatch.setenv("UAP_SHIPPED_DIR", str(tmp_path / "no-shipped-zoo"))
    digital, samples, index = cifar_setup["digital"], cifar_setup["samples"], cifar_setup["index"]
    at = AppTest.from_file(str(PAGES["inspect"]), default_timeout=120).run()
    assert not at.exception, at.exception
    assert "Print or show it, then photograph it" in [s.value for s in at.subheader]
    assert not at.get("camera_input"), "the page never asks for the camera unprompted"
    at.selectbox(key="insp_phys_sample").set_value(index).run()
    assert not at.exception, at.exception
    markdown = [m.value for m in at.markdown]
    line = next(m for m in markdown if m.startswith("The model on this image:"))
    assert (f"clean **{digital.clean_top.names[0]}**" in line and f"perturbed **{digital.perturbed_top.names[0]}**"
            in line and line.endswith("— fooled."))
    assert any("1760 × 1760 px" in c.value and "14.9 × 14.9 cm" in c.value and "300 DPI" in c.value
               for c in at.caption)
    assert any("The photo is a new image." in i.value and "δ is not added to it again" in i.value for i in at.info)
    assert [b for b in at.get("download_button") if "Print-size PNG" in b.proto.label]

    uploader = next(u for u in at.file_uploader if u.key == "insp_phys_photo_upload")
    uploader.set_value(("digital.png", png(digital.perturbed), "image/png")).run()
    assert not at.exception, at.exception
    verdict = next(m.value for m in at.markdown if "The photo" in m.value and "the model" in m.value)
    assert verdict.startswith(":red[**The photo fools the model:**]")
    assert f"the photo is **{digital.perturbed_top.names[0]}**" in verdict
    assert f"the clean image **{digital.clean_top.names[0]}**" in verdict
    assert verdict.endswith("keeps the digital perturbed image's label.")
    tables = {kind: next(m.value for m in at.markdown if f"data-uap-top5=\"physical-{kind}\"" in m.value)
              for kind in ("clean", "perturbed", "photo")}
    for name in digital.perturbed_top.names:
        assert f">{name}</td>" in tables["photo"]
    assert tables["photo"].split("<tbody>")[1] == tables["perturbed"].split("<tbody>")[1], "one batch: same numbers"

    next(u for u in at.file_uploader if u.key == "insp_phys_photo_upload").set_value(
        ("clean.png", png(samples.pixels[index]), "image/png")).run()
    verdict = next(m.value for m in at.markdown if "The photo" in m.value and "the model" in m.value)
    assert verdict.startswith(":green[**The photo does not fool the model:**]")
    assert f"the photo is **{digital.clean_top.names[0]}**" in verdict and "δ did not survive" in verdict

    next(u for u in at.file_uploader if u.key == "insp_phys_photo_upload").set_value(
        ("junk.png", b"not an image", "image/png")).run()
    assert not at.exception and any("This photo cannot be used" in e.value for e in at.error)

    at.radio(key="insp_phys_photo_source").set_value("camera").run()
    assert not at.exception, at.exception
    assert len(at.get("camera_input")) == 1, "the camera only once chosen"
