"""The user's own classifier through the one registry: ``timm:ARCH`` and ``file:PATH?…`` (TorchScript, torch.export).

Everything runs offline: timm models are built with random weights (or weights written by the test), and the
classifier files are made here from the CIFAR ResNet-20 of ../shared.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import shared_path
from uap_core import models
from uap_core.__main__ import main
from uap_core.errors import ModelUnavailableError, ParameterError
from uap_core.images import load_npz, load_samples
from uap_core.models import CIFAR10_CLASSES, get_spec, load_model, model_status
from uap_core.run import Run, RunConfig

timm = pytest.importorskip("timm")

TINY = "timm:mobilenetv3_small_050"  # 1.6 M parameters: fast on the CPU


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No network and empty caches: HF_HUB_OFFLINE=1, HF_HOME and TORCH_HOME in a fresh folder."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


@pytest.fixture(scope="module")
def tiny() -> models.Classifier:
    torch.manual_seed(0)
    return load_model(TINY, "cpu", pretrained=False)


@pytest.fixture(scope="module")
def samples_224():
    return load_samples(224, 256, list(models.imagenet_class_names()))


# ---------------------------------------------------------------------------------------------------- timm
def test_timm_model_takes_timms_preprocessing(tiny, samples_224) -> None:
    config = timm.data.resolve_model_data_config(tiny.network)
    spec = tiny.spec
    assert spec.family == "timm" and spec.name == TINY and spec.num_classes == 1000
    assert spec.mean == tuple(config["mean"]) and spec.std == tuple(config["std"])
    assert spec.input_size == config["input_size"][1] == 224
    assert spec.resize_size == math.floor(224 / config["crop_pct"]) == 256  # timm's eval transform: 224 / 0.875
    assert spec.interpolation == config["interpolation"]
    assert spec.class_names == models.imagenet_class_names()
    assert torch.equal(tiny.mean.flatten(), torch.tensor(config["mean"]))
    # the wrapper normalises pixels in [0, 1] exactly as timm's transform would before the network
    x = samples_224.pixels[:6].float() / 255
    with torch.no_grad():
        logits = tiny(x)
        by_hand = tiny.network((x - torch.tensor(config["mean"]).view(1, 3, 1, 1))
                               / torch.tensor(config["std"]).view(1, 3, 1, 1))
    assert logits.shape == (6, 1000) and torch.isfinite(logits).all()
    assert torch.allclose(logits, by_hand, atol=1e-5)
    assert not any(p.requires_grad for p in tiny.parameters()) and not tiny.training


def test_timm_model_runs_end_to_end(tiny, samples_224) -> None:
    eps = 10 / 255
    config = RunConfig(model=TINY, algorithm="sgd_uap", eps=eps, images="samples", fit=12, holdout=8, epochs=2,
                       device="cpu", keep="last", eval_every=1_000, params={"batch_size": 6}, seed=0)
    run = Run(config, model=tiny, images=samples_224)
    kinds = [event.kind for event in run.events()]
    result = run.result
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("step") == 4
    assert result.delta.shape == (3, 224, 224) and result.delta.abs().max() <= eps + 1e-7
    assert result.delta.abs().max() > 0  # the sign steps moved it (gradients flowed through the timm net)
    assert result.metadata()["model"] == TINY
    assert 0.0 <= result.evaluation.fooling_ratio <= 1.0


def test_timm_weights_file_and_custom_head(tmp_path: Path, offline_hub) -> None:
    torch.manual_seed(1)
    source = timm.create_model("mobilenetv3_small_050", num_classes=10)
    import safetensors.torch

    safetensors.torch.save_file(source.state_dict(), str(tmp_path / "head10.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "head10.pth")
    name = TINY + "?classes=10"
    spec = get_spec(name)
    assert spec.num_classes == 10 and spec.class_names[:2] == ("class 0", "class 1") and spec.dataset == "10 classes"
    assert model_status(name).state == "needs weights file"
    x = torch.rand(3, 3, 224, 224)
    with torch.no_grad():
        mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
        expected = source.eval()((x - mean) / std)
        for file in ("head10.safetensors", "head10.pth"):
            loaded = load_model(name, "cpu", weights=tmp_path / file)
            assert torch.allclose(loaded(x), expected, atol=1e-5), file
    with pytest.raises(ModelUnavailableError, match="do not fit"):
        load_model(TINY, "cpu", weights=tmp_path / "head10.safetensors")  # 10-class weights, 1000-class model
    with pytest.raises(ModelUnavailableError, match="a 10-class head has no hub weights"):
        load_model(name, "cpu")


def test_timm_without_weights_offline_says_so(offline_hub) -> None:
    status = model_status(TINY)
    assert status.state == "needs download" and "timm/mobilenetv3_small_050" in status.detail
    with pytest.raises(ModelUnavailableError, match=r"HF_HUB_OFFLINE is set\): no network and no file.*--weights"):
        load_model(TINY, "cpu")
    with pytest.raises(ModelUnavailableError, match="downloading is off"):
        load_model(TINY, "cpu", download=False)
    with pytest.raises(ModelUnavailableError, match="weights file not found"):
        load_model(TINY, "cpu", weights=offline_hub / "nope.safetensors")


def test_timm_names_refused_clearly() -> None:
    with pytest.raises(ParameterError, match=r"unknown timm model 'convnxt_tiny' \(did you mean convnext_tiny.*"
                                             r"timm\.list_models"):
        get_spec("timm:convnxt_tiny")
    with pytest.raises(ParameterError, match="no pretrained tag 'nope'; its tags: .*convnext_tiny.fb_in1k"):
        get_spec("timm:convnext_tiny.nope")
    with pytest.raises(ParameterError, match="unknown option"):
        get_spec("timm:resnet18?size=3")
    assert get_spec("timm:convnext_tiny.fb_in22k").num_classes == 21841  # its own head, named "class i"


# ---------------------------------------------------------------------------------------------------- files
@pytest.fixture(scope="module")
def resnet20() -> models.Classifier:
    shared_path("models/cifar10-resnet/resnet20-12fca82f.th")
    return load_model("cifar_resnet20", "cpu")


@pytest.fixture(scope="module")
def cifar_x(cifar_npz) -> torch.Tensor:
    return load_npz(cifar_npz, 32, 32).pixels[:20].float() / 255


def file_name(path: Path, extra: str = "") -> str:
    return f"file:{path}?size=32&mean=0.485/0.456/0.406&std=0.229/0.224/0.225{extra}"


def test_torchscript_file_gives_the_modules_logits(tmp_path: Path, resnet20, cifar_x) -> None:
    path = tmp_path / "r20.pt"
    torch.jit.save(torch.jit.script(resnet20.network), str(path))
    name = file_name(path, "&labels=cifar10")
    model = load_model(name, "cpu")
    spec = model.spec
    assert (spec.family, spec.input_size, spec.resize_size, spec.num_classes) == ("file", 32, 32, 10)
    assert spec.class_names == CIFAR10_CLASSES and spec.mean == resnet20.spec.mean and "TorchScript" in spec.title
    with torch.no_grad():
        assert torch.equal(model(cifar_x), resnet20(cifar_x))  # same normalised input, same network
    assert model_status(name).state == "available"
    assert get_spec(f"cifar_resnet20,{name}").num_classes == 10  # one registry: ensembles take it too
    # without labels=, 10 outputs are "class i"; ImageNet names would need 1000
    assert get_spec(file_name(path)).class_names[9] == "class 9"
    with pytest.raises(ParameterError, match="labels=imagenet needs 1000 outputs"):
        get_spec(file_name(path, "&labels=imagenet"))


def test_export_file_gives_the_modules_logits(tmp_path: Path, resnet20, cifar_x) -> None:
    dynamic = tmp_path / "dynamic.pt2"
    example = (torch.rand(2, 3, 32, 32),)
    batch = torch.export.Dim("batch")
    torch.export.save(torch.export.export(resnet20.network, example, dynamic_shapes={"x": {0: batch}}), dynamic)
    fixed = tmp_path / "fixed.pt2"  # exported with a batch of 8: run in chunks of 8, the last one padded
    torch.export.save(torch.export.export(resnet20.network, (torch.rand(8, 3, 32, 32),)), fixed)
    for path in (dynamic, fixed):
        model = load_model(f"file:{path}?labels=cifar10", "cpu")  # size taken from the program: 32
        assert model.spec.input_size == 32 and "torch.export" in model.spec.title
        with torch.no_grad():
            assert torch.allclose(model(cifar_x), resnet20(cifar_x), atol=1e-5), path.name
        x = cifar_x[:3].clone().requires_grad_(True)
        model(x).logsumexp(1).sum().backward()  # attacks need input gradients through it
        assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ParameterError, match="takes 32×32 inputs, not size=64"):
        get_spec(f"file:{fixed}?size=64")


class TwoOutputs(nn.Module):
    def forward(self, x: torch.Tensor):
        return x.mean((2, 3)), x.amax((2, 3))


class FeatureMap(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :2]


def test_bad_model_files_are_refused_clearly(tmp_path: Path, resnet20, capsys) -> None:
    with pytest.raises(ModelUnavailableError, match="model file not found"):
        get_spec(f"file:{tmp_path / 'missing.pt'}?size=32")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelUnavailableError, match="not a TorchScript or torch.export file"):
        get_spec(f"file:{tmp_path / 'notes.txt'}")
    torch.save(resnet20.network.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(ModelUnavailableError, match="torch.save checkpoint .*timm:ARCH"):
        get_spec(f"file:{tmp_path / 'weights.pt'}")
    for module, message in ((TwoOutputs(), "returns a tuple"), (FeatureMap(), r"returns a 2×2×32×32")):
        path = tmp_path / f"{type(module).__name__}.pt"
        torch.jit.save(torch.jit.script(module), str(path))
        with pytest.raises(ModelUnavailableError, match=message):
            get_spec(f"file:{path}?size=32")
    good = tmp_path / "r20.pt"
    torch.jit.save(torch.jit.script(resnet20.network), str(good))
    with pytest.raises(ParameterError, match="joined by '/'"):
        get_spec(f"file:{good}?size=32&mean=0.485,0.456,0.406")
    with pytest.raises(ParameterError, match="unknown option 'crop=1'"):
        get_spec(f"file:{good}?crop=1")
    with pytest.raises(ParameterError, match="std needs 1 or 3 finite values above 0"):
        get_spec(f"file:{good}?std=0/1/1")
    with pytest.raises(ParameterError, match="carries its own weights"):
        load_model(f"file:{good}?size=32", weights=tmp_path / "weights.pt")
    # the CLI: one line, exit 2
    assert main(["evaluate", "--uap", "x.safetensors", "--model", f"file:{tmp_path / 'missing.pt'}",
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model file not found") and err.count("\n") == 1


class Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def test_pt2_whose_weights_need_unpickling_is_refused_unrun(tmp_path: Path) -> None:
    """torch.export.load unpickles "use_pickle" weights with weights_only=False: such a file is refused before."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4)).eval()
    clean = tmp_path / "clean.pt2"
    torch.export.save(torch.export.export(net, (torch.rand(2, 3, 16, 16),)), clean)
    marker = tmp_path / "pwned"
    payload = io.BytesIO()
    torch.save({"w": Evil(marker)}, payload)
    evil = tmp_path / "evil.pt2"
    with zipfile.ZipFile(clean) as src:
        members = {info.filename: src.read(info) for info in src.infolist()}
    config_name = next(n for n in members if n.endswith("data/weights/model_weights_config.json"))
    config = json.loads(members[config_name])
    first = next(iter(config["config"].values()))
    first["use_pickle"] = True  # this weight now comes as a torch.save pickle, as torch.export.save may write it
    members[config_name] = json.dumps(config).encode()
    members[config_name.replace("model_weights_config.json", first["path_name"])] = payload.getvalue()
    with zipfile.ZipFile(evil, "w") as dst:
        for member, data in members.items():
            dst.writestr(member, data)
    assert get_spec(f"file:{clean}").num_classes == 4
    with pytest.raises(ModelUnavailableError, match=r"refused to load .*weight_0 it references __builtin__\.exec"):
        get_spec(f"file:{evil}")
    assert not marker.exists()
    try:  # and the refusal matters: torch.export.load itself would have run it
        torch.export.load(str(evil))
    except Exception:
        pass
    assert marker.exists()


def test_list_models_explains_the_dynamic_forms(capsys) -> None:
    assert main(["list-models"]) == 0
    out = capsys.readouterr().out
    assert "timm:ARCH" in out and "file:PATH?size=" in out and "efficientnet_lite0" in out
