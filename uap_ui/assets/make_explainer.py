"""Rebuild ``explainer.png`` (the Home page's picture): clean image + amplified δ = perturbed image, with the
model's top label and confidence before and after. A real UAP fitted with uap_core on the embedded samples.

    python -m uap_ui.assets.make_explainer          # a few minutes on a laptop CPU
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from uap_core.artifacts import perturbation_png  # noqa: E402
from uap_core.run import Run, RunConfig  # noqa: E402
from uap_core.report import perturbation_report, perturbed_pixels  # noqa: E402
from uap_ui.analysis import to_pil  # noqa: E402

OUT = Path(__file__).resolve().parent / "explainer.png"
SIDE = 224
PAD = 16


def _font(size: int) -> ImageFont.FreeTypeFont:
    """DejaVu Sans where installed (it has δ and ×), else Pillow's built-in font."""
    for path in ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def main() -> None:
    config = RunConfig(model="efficientnet_lite0", algorithm="sgd_uap", eps=10 / 255, images="samples", fit=24,
                       holdout=1, seed=0, device="cpu", epochs=25, eval_every=25, params={"batch_size": 6})
    run = Run(config)
    result = run.run_to_end(lambda e: print(e.kind, e.step, e.data.get("fooling_ratio", ""), flush=True))
    images = run.images
    report = perturbation_report(run.model, images, result.delta)
    print("fooling ratio on all samples:", report.fooling_ratio)
    candidates = [p for p in report.predictions if p.fooled and p.name.startswith("foolbox/")]
    best = max(candidates or report.predictions, key=lambda p: p.clean_confidence)
    clean = images.pixels[best.index]
    perturbed = perturbed_pixels(clean[None], result.delta)[0]
    delta_png, scale = perturbation_png(result.delta)
    import io

    delta_img = Image.open(io.BytesIO(delta_png)).convert("RGB")
    font, big = _font(17), _font(40)
    width = 3 * SIDE + 2 * 56 + 2 * PAD
    height = SIDE + 2 * PAD + 34
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    x = PAD
    panels = [(to_pil(clean), f"{best.clean_name} {best.clean_confidence:.0%}", "#1a7f37"),
              (delta_img, f"δ (×{scale:.0f}), max 10/255", "#444444"),
              (to_pil(perturbed), f"{best.perturbed_name} {best.perturbed_confidence:.0%}", "#cf222e")]
    for i, (picture, caption, colour) in enumerate(panels):
        canvas.paste(picture.resize((SIDE, SIDE)), (x, PAD))
        draw.text((x + SIDE // 2, PAD + SIDE + 10), caption, fill=colour, font=font, anchor="ma")
        if i < 2:
            draw.text((x + SIDE + 28, PAD + SIDE // 2), "+" if i == 0 else "=", fill="#222222", font=big,
                      anchor="mm")
        x += SIDE + 56
    canvas.save(OUT, format="PNG", optimize=True)
    print("wrote", OUT, canvas.size, "image", best.name)


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
