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

from ui_helpers import ROOT, save_test_uap, streamlit_server

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
    from PIL import Image

    data = base64.b64decode(src.split(",", 1)[1])
    return torch.from_numpy(np.array(Image.open(io.BytesIO(data)).convert("RGB"))).permute(2, 0, 1).contiguous()


def test_camera_photo_of_the_perturbed_image_is_classified_against_the_clean_one(tmp_path):
    if not CHROMIUM.is_file():
        _unavailable(f"{CHROMIUM} is missing")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        _unavailable("playwright (Python) is not installed")
    from uap_core.images import load_samples
    from uap_core.library import UAPLibrary
    from uap_core.models import load_model
    from uap_core.physical import upscale_nearest
    from uap_core.report import photo_report

    library = tmp_path / "library"
    save_test_uap(library, "cifar-uap", size=32, eps=EPS, model=MODEL)
    delta = UAPLibrary(library).load("cifar-uap").delta
    model = load_model(MODEL, "cpu")
    samples = load_samples(32, 32, list(model.spec.class_names))
    digital = [photo_report(model, samples.pixels[i], delta) for i in range(len(samples))]
    index = next(i for i, r in enumerate(digital) if r.flipped)  # a sample δ fools digitally
    digital = digital[index]
    camera_file = tmp_path / "screen.y4m"
    write_y4m(camera_file, upscale_nearest(digital.perturbed, 15))  # the perturbed image filling the "screen"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    env = {"UAP_LIBRARY_DIR": str(library), "UAP_SHIPPED_DIR": str(tmp_path / "no-zoo")}
    args = LAUNCH_ARGS + ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                          f"--use-file-for-fake-video-capture={camera_file}"]
    import time; T=time.monotonic(); mark=lambda w: print(f'{time.monotonic()-T:6.1f}s {w}')
    with streamlit_server(tmp_path, env) as (url, _), sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            context = browser.new_context(viewport={"width": 1300, "height": 1100}, permissions=["camera"])
            page = context.new_page()
            mark('goto')
            page.goto(f"{url}/Inspect")
            idle = page.locator("[data-testid='stApp'][data-test-script-state='notRunning']")
            expect(idle).to_have_count(1, timeout=90_000)
            section = page.locator(".st-key-insp_physical")
            expect(section.get_by_role("heading", name="Print or show it, then photograph it")).to_be_visible(
                timeout=60_000)
            mark('loaded')
            expect(page.locator("[data-testid='stCameraInput']")).to_have_count(0)  # never asked unprompted
            if index:
                section.locator("[data-testid='stSelectbox']").filter(has_text="Sample").click()
                page.get_by_role("option", name=samples.names[index], exact=True).click()
            expect(section.get_by_text(f"perturbed {digital.perturbed_top.names[0]}")).to_be_visible(timeout=30_000)
            mark('sample')
            expect(section.get_by_text("The photo is a new image.")).to_be_visible()
            section.locator("[data-testid='stRadio']").filter(has_text="Photo from").get_by_text("the camera").click()
            take = section.get_by_role("button", name="Take Photo")
            expect(take).to_be_enabled(timeout=30_000)
            page.wait_for_timeout(1500)  # the fake camera's first frames
            mark('took')
            take.click()
            expect(section.get_by_text("Top-5, your photo")).to_be_visible(timeout=60_000)
            expect(idle).to_have_count(1, timeout=60_000)
            expect(page.locator("[data-testid='stException']")).to_have_count(0)

            mark('report')
            photo = data_uri_picture(section.locator("figure[data-uap-photo='physical-photo'] img").get_attribute("src"))
            factor = photo.shape[1] // 32
            photo = photo[:, ::factor, ::factor]
            d = (digital.perturbed.float() - digital.clean.float()).flatten(); e = (photo.float() - digital.clean.float()).flatten()
            print("cos", float(d @ e / d.norm() / e.norm()))
            print("photo vs perturbed: mean |diff|", (photo.float() - digital.perturbed.float()).abs().mean(), "vs clean", (photo.float() - digital.clean.float()).abs().mean())
            from PIL import Image as _I
            _I.fromarray(torch.cat([photo, digital.perturbed, digital.clean], 2).repeat_interleave(8,1).repeat_interleave(8,2).permute(1,2,0).numpy()).save("/tmp/phys_cmp.png")
            print("camera img", page.locator("[data-testid='stCameraInput'] img").evaluate_all("els => els.map(e => [e.naturalWidth, e.naturalHeight])"))
            print("video", page.locator("[data-testid='stCameraInput'] video").evaluate_all("els => els.map(e => [e.videoWidth, e.videoHeight])"))
            tables = {kind: [c.inner_text() for c in section.locator(f"table[data-uap-top5='physical-{kind}'] tbody tr td:nth-child(2)").all()]
                      for kind in ("clean", "perturbed", "photo")}
            print(tables)
            print(section.locator("[data-testid='stMarkdownContainer']").filter(has_text="The photo").first.inner_text())
            page.set_viewport_size({"width": 1300, "height": 3200})
            section.scroll_into_view_if_needed()
            page.wait_for_timeout(500)
            section.screenshot(path=str(SCREENSHOTS / "physical-section-1300px.png"))
            page.set_viewport_size({"width": 1300, "height": 900})
            shown = section.locator(".st-key-insp_phys_show img")
            shown.scroll_into_view_if_needed()
            shown.hover()
            mark("hover")
            section.locator(".st-key-insp_phys_show").get_by_role("button", name="Fullscreen").click()
            page.wait_for_timeout(1000)
            print(shown.bounding_box(), shown.evaluate("img => getComputedStyle(img).imageRendering"), shown.evaluate("img => [img.naturalWidth, img.naturalHeight]"))
            page.screenshot(path=str(SCREENSHOTS / "physical-fullscreen-1300px.png"))
        finally:
            browser.close()
