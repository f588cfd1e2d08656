"""Streaming evaluation (uap_core.images.ImageStream through a DataLoader): the same numbers as the in-memory
path on the same images, and memory that does not grow with the number of images."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from uap_core.artifacts import UAPArtifact
from uap_core.errors import ParameterError
from uap_core.evaluation import evaluate, predict_many
from uap_core.images import ImageStream, load_images, load_npz, open_stream, should_stream
from uap_core.models import CIFAR10_CLASSES, load_model
from uap_core.run import Run, RunConfig
from uap_core.transfer import evaluate_uap, transfer_matrix

REPO = Path(__file__).resolve().parent.parent
EPS = 8 / 255


@pytest.fixture(scope="module")
def cifar_folder(cifar_npz, tmp_path_factory) -> Path:
    """160 CIFAR-10 test images as JPEG files in class-name folders (labels come from the folder names)."""
    root = tmp_path_factory.mktemp("cifar_jpegs")
    with np.load(cifar_npz) as z:
        x, y = z["x"][:160], z["y"][:160]
    for i, (picture, label) in enumerate(zip(x, y)):
        folder = root / CIFAR10_CLASSES[int(label)].replace(" ", "_")
        folder.mkdir(exist_ok=True)
        Image.fromarray(picture).save(folder / f"{i:04d}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def resnet20():
    return load_model("cifar_resnet20", "cpu")


def _delta(seed: int = 0, size: int = 32) -> torch.Tensor:
    signs = torch.randint(0, 2, (3, size, size), generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return signs.float() * EPS


def _same_evaluation(a, b) -> None:
    assert a.count == b.count
    assert torch.equal(a.clean_labels, b.clean_labels) and torch.equal(a.perturbed_labels, b.perturbed_labels)
    assert torch.equal(a.clean_confidence, b.clean_confidence)
    assert torch.equal(a.perturbed_confidence, b.perturbed_confidence)
    assert a.as_dict(top=None) == b.as_dict(top=None)  # fooling ratio, accuracies, both histograms


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_evaluation_equals_in_memory(resnet20, cifar_folder, workers):
    names = list(CIFAR10_CLASSES)
    in_memory = load_images(str(cifar_folder), 32, 32, names)
    stream = open_stream(str(cifar_folder), 32, 32, names)
    assert len(stream) == len(in_memory) == 160 and stream.names == in_memory.names
    assert torch.equal(stream.labels, in_memory.labels) and bool((stream.labels >= 0).all())
    delta = _delta()
    expected = evaluate(resnet20, in_memory.pixels, delta, in_memory.labels, batch_size=48)
    found = evaluate(resnet20, stream, delta, batch_size=48, workers=workers)
    _same_evaluation(found, expected)
    assert found.fooling_ratio > 0 and found.clean_accuracy is not None  # a real measurement, with labels


def test_stream_items_are_the_in_memory_pixels(cifar_npz, cifar_folder):
    names = list(CIFAR10_CLASSES)
    in_memory = load_images(str(cifar_folder), 32, 32, names)
    stream = open_stream(str(cifar_folder), 32, 32, names)
    assert all(torch.equal(stream[i][0], in_memory.pixels[i]) for i in (0, 77, 159))
    fit, held_out = stream.split(50, 60, seed=3)
    memory_fit, memory_held_out = in_memory.split(50, 60, seed=3)
    assert held_out.names == memory_held_out.names
    assert torch.equal(fit.decode().pixels, memory_fit.pixels)
    # a .npz resized to another size: item by item as the whole-array loader resizes it
    resized = load_npz(cifar_npz, 40, 46)
    npz_stream = open_stream(str(cifar_npz), 40, 46, limit=30)
    assert len(npz_stream) == 30
    assert torch.equal(npz_stream.decode().pixels, resized.pixels[:30])
    assert torch.equal(npz_stream[29][0], resized.pixels[29]) and npz_stream[29][1] == int(resized.labels[29])


def test_undecodable_file_is_left_out_of_a_stream(resnet20, cifar_folder, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    for path in sorted(cifar_folder.rglob("*.jpg"))[:20]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "0005.jpg").write_bytes(b"not a picture")
    stream = open_stream(str(folder), 32, 32, list(CIFAR10_CLASSES))
    found = predict_many(resnet20, stream, [None], batch_size=8, workers=0)
    assert len(stream) == 20 and found.count == 19
    assert found.valid.tolist() == [name != "0005.jpg" for name in stream.names]
    in_memory = load_images(str(folder), 32, 32, list(CIFAR10_CLASSES))
    assert len(in_memory) == 19 and [s.name for s in in_memory.skipped] == ["0005.jpg"]
    report = evaluate_uap(UAPArtifact(_delta(), {"norm": "linf"}, None), resnet20, stream, workers=0)
    assert report.count == 19 and "0005.jpg" not in [p.name for p in report.predictions]


def test_streamed_report_and_transfer_equal_in_memory(resnet20, cifar_folder):
    names = list(CIFAR10_CLASSES)
    artifact = UAPArtifact(_delta(1), {"norm": "linf", "model": "cifar_resnet20"}, None)
    in_memory = load_images(str(cifar_folder), 32, 32, names)
    expected = evaluate_uap(artifact, resnet20, in_memory)
    found = evaluate_uap(artifact, resnet20, open_stream(str(cifar_folder), 32, 32, names), workers=1)
    _same_evaluation(found.evaluation, expected.evaluation)
    assert found.random_fooling_ratio == expected.random_fooling_ratio
    assert [p.__dict__ for p in found.predictions] == [p.__dict__ for p in expected.predictions]

    uaps = {"a": artifact, "b": UAPArtifact(_delta(2), {}, None)}
    models = {"cifar_resnet20": resnet20}
    table = transfer_matrix(uaps, ["cifar_resnet20"], str(cifar_folder), "cpu", models=models)
    streamed = transfer_matrix(uaps, ["cifar_resnet20"], str(cifar_folder), "cpu", models=models, stream="on",
                               workers=1)
    assert streamed.as_dict() == table.as_dict() and table.image_count == 160


def test_run_streams_its_held_out_images_with_the_same_result(resnet20, cifar_folder):
    config = RunConfig(model="cifar_resnet20", algorithm="sgd_uap", images=str(cifar_folder), fit=60, holdout=80,
                       params={"batch_size": 20}, epochs=1, device="cpu", eps=EPS, keep="best", eval_every=2)
    expected = Run(config, model=resnet20).run_to_end()
    run = Run(RunConfig(**{**config.__dict__, "stream": "on", "workers": 1}), model=resnet20)
    found = run.run_to_end()
    assert isinstance(run.holdout_pixels, ImageStream)  # the held-out images were never decoded into memory
    assert torch.equal(found.delta, expected.delta) and found.best_step == expected.best_step
    _same_evaluation(found.evaluation, expected.evaluation)
    assert found.random_evaluation.fooling_ratio == expected.random_evaluation.fooling_ratio
    assert [e["fooling_ratio"] for e in found.history if e["kind"] == "eval"] == \
        [e["fooling_ratio"] for e in expected.history if e["kind"] == "eval"]
    assert found.info["streamed"] and found.info["heldout_images"] == 80


def test_stream_choices(cifar_folder, cifar_npz, resnet20):
    assert should_stream("on", "samples") and not should_stream("off", str(cifar_folder))
    assert not should_stream("auto", str(cifar_folder))  # 160 files: below the automatic threshold
    assert not should_stream("auto", str(cifar_npz))
    with pytest.raises(ParameterError, match="stream 'yes' is not allowed"):
        should_stream("yes", str(cifar_folder))
    with pytest.raises(ParameterError, match="holdout views need the held-out images in memory"):
        Run(RunConfig(model="cifar_resnet20", images=str(cifar_folder), stream="on", holdout_views=2, device="cpu"),
            model=resnet20).run_to_end()
    with pytest.raises(ParameterError, match="workers"):
        RunConfig(workers=-1).validated()


def test_cli_evaluate_streams_with_the_same_counts(cifar_folder, tmp_path, resnet20):
    from uap_core.jsonable import jsonable
    from uap_core.artifacts import load_uap, save_uap

    path = save_uap(_delta(3), {"model": "cifar_resnet20", "norm": "linf"}, tmp_path / "d.safetensors")
    done = subprocess.run([sys.executable, "-m", "uap_core", "evaluate", "--uap", str(path), "--model",
                           "cifar_resnet20", "--images", str(cifar_folder), "--device", "cpu", "--json",
                           "--stream", "on", "--workers", "1"], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    in_memory = evaluate_uap(load_uap(path), resnet20, load_images(str(cifar_folder), 32, 32, list(CIFAR10_CLASSES)))
    expected = json.loads(json.dumps(jsonable(in_memory.as_dict())))
    assert {k: found[k] for k in expected} == expected and found["count"] == 160


# ---------------------------------------------------------------------------------------------- memory
MEMORY_PROBE = textwrap.dedent("""
    import os, sys, threading, time
    import torch
    from torch import nn
    from uap_core.evaluation import predict_many
    from uap_core.images import load_images, open_stream
    from uap_core.models import Classifier, ModelSpec

    torch.set_num_threads(1)
    spec = ModelSpec(name="probe", title="probe", family="test", dataset="cifar10", input_size=320,
                     resize_size=366, mean=(0.5,) * 3, std=(0.25,) * 3)
    model = Classifier(nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, 10)), spec)
    delta = torch.full((3, 320, 320), 4 / 255)
    page = os.sysconf("SC_PAGE_SIZE")
    peak = [0.0]

    def sample():  # this process's resident memory every 2 ms (ru_maxrss would carry the parent's over exec)
        while True:
            with open("/proc/self/statm") as f:
                peak[0] = max(peak[0], int(f.read().split()[1]) * page / 2**20)
            time.sleep(0.002)

    threading.Thread(target=sample, daemon=True).start()

    def measure(work):
        time.sleep(0.05)
        peak[0] = 0.0
        count = work()
        time.sleep(0.05)
        return count, peak[0]

    small, large = sys.argv[1], sys.argv[2]
    predict_many(model, open_stream(small, 320, 366, limit=4), [None, delta], batch_size=2, workers=2)  # warm-up
    stream = lambda folder: predict_many(model, open_stream(folder, 320, 366), [None, delta], batch_size=2,
                                         workers=2).count
    memory = lambda folder: predict_many(model, load_images(folder, 320, 366).pixels, [None, delta],
                                         batch_size=2).count
    figures = {"stream_n": measure(lambda: stream(small)), "stream_4n": measure(lambda: stream(large)),
               "memory_4n": measure(lambda: memory(large))}
    print(figures)
""")


def test_streaming_memory_stays_flat_as_the_image_count_grows(imagenet_200, tmp_path):
    """Peak resident memory of one process while streaming N and then 4N photos at 320 px (300 kB each when
    decoded), sampled every 2 ms: it grows by less than 20 MB — about a third of the 55 MB that holding the 180
    extra photos would take (observed: 0-5 MB) — while decoding the same 4N photos into memory first (the control)
    raises it by more than 40 MB (observed: 150-175 MB). Without giving freed heap memory back after each batch
    (evaluation.release_freed_memory) this failed in about half the runs: glibc's fragmented heap grew to 2.6 GB."""
    photos = sorted(imagenet_200.glob("*.JPEG"))[:60]
    small, large = tmp_path / "n", tmp_path / "4n"
    small.mkdir(), large.mkdir()
    for i, photo in enumerate(photos):
        (small / photo.name).symlink_to(photo)
        for copy in range(4):
            (large / f"{copy}_{photo.name}").symlink_to(photo)
    done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(small), str(large)], capture_output=True,
                          text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert done.returncode == 0, done.stderr
    figures = eval(done.stdout.strip().splitlines()[-1])  # noqa: S307 - our own probe's dict of numbers
    assert figures["stream_n"][0] == 60 and figures["stream_4n"][0] == 240 and figures["memory_4n"][0] == 240
    streamed_growth = figures["stream_4n"][1] - figures["stream_n"][1]
    in_memory_growth = figures["memory_4n"][1] - figures["stream_4n"][1]
    print(figures)
    assert streamed_growth < 20, figures
    assert in_memory_growth > 40, figures
