"""Inspect's physical check in a real browser, with a file standing in for the camera: Chromium's fake capture
device plays a Y4M video made here from the perturbed image itself (the "screen" the camera looks at); the test
takes the photo with the camera widget's button and checks the report: the photo's top-5 is what the model says of
the photo the page shows (classified here again, without δ), beside the clean image's and the digital perturbed
image's, and the verdict compares the photo's top label with the clean image's.

``streamlit run app.py`` + Playwright with Debian's Chromium, as tests/test_browser.py. CIFAR-10 ResNet-20 (32 px)
keeps it cheap. Screenshots (1300 px wide): test-artifacts/screenshots/physical-*.png.
"""

from __future__ import annotations

import base64
import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ui_helpers import ROOT, patient, save_test_uap, screenshot, streamlit_server

CHROMIUM = Path(os.environ.get("UAP_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"]
MODEL = "cifar_resnet20"
EPS = 16 / 255


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so the browser test must run)", pytrace=False)
    pytest.skip(reason)


def write_y4m(path: Path, picture: torch.Tensor, frames: int = 2) -> None:
    """A (3, H, W) uint8 RGB picture (H, W even) as a still Y4M video: 4:2:0, BT.601 limited range, what Chromium's
    fake capture device reads with ``--use-file-for-fake-video-capture``."""
    rgb = picture.permute(1, 2, 0).double().numpy()
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    cb = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    cr = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    height, width = y.shape

    def half(plane: np.ndarray) -> np.ndarray:
        return plane.reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3))

    planes = [np.clip(np.rint(p), 0, 255).astype(np.uint8).tobytes() for p in (y, half(cb), half(cr))]
    with open(path, "wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F30:1 Ip A1:1 C420\n".encode())
        for _ in range(frames):
            out.write(b"FRAME\n" + b"".join(planes))


def data_uri_picture(src: str) -> torch.Tensor:
    """A ``data:image/png;base64,…`` URI as a (3, H, W) uint8 tensor."""
    data = base64.b64decode(src.split(",", 1)[1])
    return torch.from_numpy(np.array(Image.open(io.BytesIO(data)).convert("RGB"))).permute(2, 0, 1).contiguous()


def top5_texts(section, kind: str) -> tuple[list[str], list[str]]:
    """(labels, confidences) of one top-5 table of the report, as the page shows them."""
    rows = section.locator(f"table[data-uap-top5='physical-{kind}'] tbody tr")
    return ([r.locator("td").nth(1).inner_text().strip() for r in rows.all()],
            [r.locator("td[data-uap-confidence]").inner_text().strip() for r in rows.all()])


def test_camera_photo_of_the_perturbed_image_is_classified_against_the_clean_one(tmp_path):
    """Measured (this file, CIFAR-10 ResNet-20, δ random ±16/255, the first embedded sample it fools digitally:
    truck → cat): the camera's photo (808×808 JPEG of the 480×480 fake video, decoded to 32 px) keeps δ's
    direction (cosine of photo − clean with δ: 0.79) but not its label: the photo is "dog" — a new image."""
    if not CHROMIUM.is_file():
        _unavailable(f"{CHROMIUM} is missing")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        _unavailable("playwright (Python) is not installed")
    from uap_core.images import load_samples
    from uap_core.library import UAPLibrary
    from uap_core.models import load_model
    from uap_core.physical import physical_report, upscale_nearest
    from uap_core.report import photo_report

    library = tmp_path / "library"
    save_test_uap(library, "cifar-uap", size=32, eps=EPS, model=MODEL)
    delta = UAPLibrary(library).load("cifar-uap").delta
    model = load_model(MODEL, "cpu")
    samples = load_samples(32, 32, list(model.spec.class_names))
    reports = [photo_report(model, samples.pixels[i], delta) for i in range(len(samples))]
    index = next(i for i, r in enumerate(reports) if r.flipped)  # a sample δ fools digitally
    digital = reports[index]
    camera_file = tmp_path / "screen.y4m"
    write_y4m(camera_file, upscale_nearest(digital.perturbed, 15))  # the perturbed image filling the "screen"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    env = {"UAP_LIBRARY_DIR": str(library), "UAP_SHIPPED_DIR": str(tmp_path / "no-zoo")}
    args = LAUNCH_ARGS + ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                          f"--use-file-for-fake-video-capture={camera_file}"]
    with streamlit_server(tmp_path, env) as (url, _), sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
        page = patient(browser.new_context(viewport={"width": 1300, "height": 1000},
                                           permissions=["camera"], accept_downloads=True)).new_page()
        try:
            page.goto(f"{url}/Inspect")
            idle = page.locator("[data-testid='stApp'][data-test-script-state='notRunning']")
            expect(idle).to_have_count(1, timeout=90_000)
            section = page.locator(".st-key-insp_physical")
            expect(section.get_by_role("heading", name="Print or show it, then photograph it")).to_be_visible(
                timeout=60_000)
            expect(page.locator("[data-testid='stCameraInput']")).to_have_count(0)  # never asked unprompted
            if index:
                section.locator("[data-testid='stSelectbox']").filter(has_text="Sample").click()
                page.get_by_role("option", name=samples.names[index], exact=True).click()
            expect(section.get_by_text(f"clean {digital.clean_top.names[0]}")).to_contain_text(
                f"perturbed {digital.perturbed_top.names[0]}", timeout=30_000)
            expect(section.get_by_text("The photo is a new image.")).to_be_visible()

            # the print-size PNG: 15 cm at 300 DPI by default, each pixel of the perturbed image a 55×55 square
            with page.expect_download() as download:
                section.get_by_role("button", name="Print-size PNG").click()
            printed = Image.open(download.value.path())
            assert printed.size == (1760, 1760) and printed.info["dpi"] == pytest.approx((300, 300), abs=0.05)
            assert torch.equal(torch.from_numpy(np.array(printed.convert("RGB"))).permute(2, 0, 1),
                               upscale_nearest(digital.perturbed, 55))
            expect(section.get_by_text("1760 × 1760 px")).to_contain_text("14.9 × 14.9 cm (5.87 × 5.87 in) at 300 DPI")

            section.locator("[data-testid='stRadio']").filter(has_text="Photo from").get_by_text("the camera").click()
            take = section.get_by_role("button", name="Take Photo")
            expect(take).to_be_enabled(timeout=30_000)
            expect(section.locator("[data-testid='stCameraInput'] video")).to_have_js_property(
                "readyState", 4, timeout=30_000)  # the fake camera is playing
            take.click()
            expect(section.get_by_text("Top-5, your photo")).to_be_visible(timeout=60_000)
            expect(idle).to_have_count(1, timeout=60_000)
            expect(page.locator("[data-testid='stException']")).to_have_count(0)

            # the photo the page classified (drawn upscaled with crisp pixels): the camera carried δ's pattern
            shown = data_uri_picture(
                section.locator("figure[data-uap-photo='physical-photo'] img").get_attribute("src"))
            factor = shown.shape[1] // 32
            photo = shown[:, ::factor, ::factor]
            assert torch.equal(upscale_nearest(photo, factor), shown)
            moved, wanted = (photo.float() - digital.clean.float()).flatten(), (delta * 255).flatten()
            cosine = float(moved @ wanted / moved.norm() / wanted.norm())
            assert cosine > 0.5, f"the photo should carry δ's pattern (measured 0.79), got {cosine:.2f}"

            # its top-5 is the model's on that photo as it is (δ not added again: the core's physical_report, whose
            # photo_top tests/test_physical.py checks against the model on the photo alone), beside the clean and
            # digital ones
            report = physical_report(model, samples.pixels[index], delta, photo)
            assert report.clean_top.labels == digital.clean_top.labels
            assert report.perturbed_top.labels == digital.perturbed_top.labels
            expected = {"clean": report.clean_top, "perturbed": report.perturbed_top, "photo": report.photo_top}
            for kind, top in expected.items():
                labels, confidences = top5_texts(section, kind)
                assert labels == top.names, (kind, labels, top.names)
                assert confidences == [f"{c:.1%}" for c in top.confidences], (kind, confidences)
            photo_top, clean_top = report.photo_top.names[0], report.clean_top.names[0]
            line = section.locator("[data-testid='stMarkdownContainer']").filter(
                has_text=re.compile("The photo (fools|does not fool) the model"))
            expect(line).to_have_count(1)
            assert report.photo_fooled == (photo_top != clean_top)
            fooled = "The photo fools the model" if report.photo_fooled else "The photo does not fool the model"
            expect(line).to_contain_text(fooled)
            expect(line).to_contain_text(f"the photo is {photo_top}")
            expect(line).to_contain_text(clean_top)

            # nothing cut off at 1300 px: every confidence whole and inside its column, the section in the window
            for kind in expected:
                table = section.locator(f"table[data-uap-top5='physical-{kind}']")
                column = table.locator("xpath=ancestor::div[@data-testid='stColumn'][1]").bounding_box()
                for cell in table.locator("td[data-uap-confidence]").all():
                    box = cell.bounding_box()
                    assert box["x"] + box["width"] <= column["x"] + column["width"] + 1, (kind, box, column)
                    assert cell.evaluate("td => td.scrollWidth <= td.clientWidth + 1"), kind
            section_box = section.bounding_box()
            assert section_box["x"] >= 0 and section_box["x"] + section_box["width"] <= 1300, section_box
            page.set_viewport_size({"width": 1300, "height": 3000})  # the whole section in one screenshot
            section.evaluate("el => el.scrollIntoView({block: 'center'})")
            page.wait_for_timeout(300)
            screenshot(section, SCREENSHOTS / "physical-section-1300px.png")

            # full-screen-ready: Streamlit's full-screen button shows the image alone, its pixels kept square
            page.set_viewport_size({"width": 1300, "height": 900})
            large = section.locator(".st-key-insp_phys_show")
            large.evaluate("el => el.scrollIntoView({block: 'center'})")
            large.locator("img").hover()
            large.get_by_role("button", name="Fullscreen").click()
            image = large.locator("img")
            expect(image).to_have_css("image-rendering", "pixelated")
            page.wait_for_function(
                "el => el.getBoundingClientRect().height >= 0.9 * window.innerHeight", arg=image.element_handle())
            screenshot(page, SCREENSHOTS / "physical-fullscreen-1300px.png")
        except Exception:
            screenshot(page, SCREENSHOTS / "physical-failure.png")
            raise
        finally:
            browser.close()
