"""The speed paths: the compiled gradient step (RunConfig.compile; on CUDA it runs as CUDA graphs) gives the
eager path's numbers, and a compiler failure falls back to eager without losing the run — checked on the CPU
with inductor (the first call compiles for about 45 s on 2 cores), CIFAR ResNet-20 on real CIFAR-10 images;
and the forward-only batch sizes (from free memory on CUDA, cache-sized on the CPU)."""

import dataclasses

import pytest
import torch

from uap_core.algorithms import get_algorithm
from uap_core.algorithms.base import AttackSetup
from uap_core.evaluation import batch_for_memory, default_batch_size, predict_logits, predict_labels
from uap_core.images import load_images
from uap_core.models import load_model
from uap_core.params import parse_params
from uap_core.run import Run, RunConfig, choose_compile, prepare_model

EPS = 8 / 255


@pytest.fixture(scope="module")
def model():
    return prepare_model(load_model("cifar_resnet20", "cpu"), torch.device("cpu"))


@pytest.fixture(scope="module")
def pixels(cifar_npz):
    return load_images(cifar_npz, 32, 32, limit=60).pixels


def _sga(model, pixels, compile: bool):
    setup = AttackSetup(model, pixels, predict_labels(model, pixels), EPS, "linf", None,
                        torch.Generator().manual_seed(0), "fp32", compile)
    return get_algorithm("sga")(setup, parse_params(get_algorithm("sga").Params,
                                                    {"batch_size": 20, "minibatch_size": 10, "inner_passes": 2}))


def test_compiled_sga_steps_equal_the_eager_ones(model, pixels):
    eager, compiled = _sga(model, pixels, False), _sga(model, pixels, True)
    assert compiled.compiled and not eager.compiled
    delta = torch.empty(3, 32, 32).uniform_(-EPS, EPS, generator=torch.Generator().manual_seed(1))
    batch = torch.arange(20)
    g_eager, loss_eager, fooled_eager = eager.gradient(batch, delta)
    g_compiled, loss_compiled, fooled_compiled = compiled.gradient(batch, delta)
    assert compiled.compile_error is None and compiled.compiled
    assert torch.allclose(g_compiled, g_eager, rtol=1e-4, atol=1e-6 * g_eager.abs().max().item())
    assert loss_compiled.item() == pytest.approx(loss_eager.item(), rel=1e-5)
    assert fooled_compiled.item() == fooled_eager.item()
    for _ in range(3):  # three whole SGA steps (6 inner steps each): the same δ
        eager_stats, compiled_stats = eager.step(batch), compiled.step(batch)
    differing = (eager.delta != compiled.delta).float().mean().item()
    assert differing < 0.001, differing  # a sign taken of a near-zero gradient entry may differ, nothing else
    assert compiled_stats["loss"] == pytest.approx(eager_stats["loss"], rel=1e-4)


def test_compile_failure_falls_back_to_eager_and_is_reported(cifar_npz, monkeypatch):
    def broken_compile(fn, **kwargs):
        def call(*args):
            raise RuntimeError("inductor: no C++ compiler found")
        return call
    monkeypatch.setattr(torch, "compile", broken_compile)
    config = RunConfig(model="cifar_resnet20", algorithm="sgd_uap", images=str(cifar_npz), fit=40, holdout=40,
                       epochs=1, device="cpu", eps="8/255", params={"batch_size": 20}, compile="on")
    run = Run(config)
    result = run.run_to_end()
    assert result.steps == 2 and result.reason == "completed"
    assert result.info["compiled"] is False and "no C++ compiler" in result.info["compile_error"]
    reference = Run(dataclasses.replace(config, compile="off")).run_to_end()
    assert torch.equal(result.delta, reference.delta)  # the eager fallback is the eager path


def test_compile_auto_is_on_for_cuda_only():
    assert choose_compile("auto", torch.device("cuda")) and not choose_compile("auto", torch.device("cpu"))
    assert choose_compile("on", torch.device("cpu")) and not choose_compile("off", torch.device("cuda"))


def test_batch_sizes_from_free_memory_and_for_the_cpu(model, pixels):
    gib, mib = 2**30, 2**20
    assert batch_for_memory(10 * gib, 50 * mib) == 102  # half of the free memory, 50 MiB an image
    assert batch_for_memory(80 * gib, 1 * mib) == 1024 and batch_for_memory(1 * mib, 50 * mib) == 1  # clamped
    assert batch_for_memory(10 * gib, 50 * mib, share=0.25) == 51
    assert default_batch_size(model, (3, 224, 224)) == 4  # about four 224-pixel images on the CPU
    assert default_batch_size(model, (3, 32, 32)) == 196
    by_default = predict_logits(model, pixels)  # the batch size changes nothing but the speed
    assert torch.allclose(by_default, predict_logits(model, pixels, batch_size=7), atol=1e-5)


def test_cuda_batch_probe_measures_the_memory_per_image(monkeypatch):
    """The CUDA probe, run against a simulated GPU (this machine has none): two forwards of 4 and 12 images
    whose peaks differ by 8 × 30 MiB, on top of 500 MiB of fixed cost; 20 GiB free → half of it / 30 MiB."""
    import types

    from uap_core import evaluation

    mib = 2**20
    state = {"peak": 0}

    class FakeModel:
        device = torch.device("cuda")

        def __call__(self, x):
            state["peak"] = 500 * mib + len(x) * 30 * mib

    fake_cuda = types.SimpleNamespace(
        synchronize=lambda device: None, reset_peak_memory_stats=lambda device: state.update(peak=0),
        memory_allocated=lambda device: 0, max_memory_allocated=lambda device: state["peak"],
        mem_get_info=lambda device: (20 * 1024 * mib, 80 * 1024 * mib), empty_cache=lambda: None)
    monkeypatch.setattr(evaluation.torch, "cuda", fake_cuda)
    real_zeros = torch.zeros
    monkeypatch.setattr(evaluation.torch, "zeros", lambda shape, device=None: real_zeros(shape))
    model = FakeModel()
    assert evaluation.default_batch_size(model, (3, 224, 224), "fp32") == (10 * 1024) // 30
    evaluation._cuda_batch_cache.clear()
