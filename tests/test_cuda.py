"""The GPU path, run on a GPU (marker ``cuda``; every test here skips where torch sees no CUDA device).

    python -m pytest -m cuda          # on a machine with a CUDA GPU and ../shared (or $UAP_SHARED_DIR)

On real models and real images:

- whole SGA and SGD-UAP runs on CUDA, in fp32 and in bf16 (bf16 as a GPU run gets it by default: compiled, as CUDA
  graphs), against the CPU run of the same configuration and seed. The seeded generator lives on the CPU, so both
  runs draw the same batches and only the arithmetic differs (cuDNN's kernels, TF32 convolutions, bf16). Margin on
  the held-out fooling ratio: 0.03 in fp32, 0.05 in bf16 — the seed-to-seed spread of the same CPU runs is 0.025
  (SGA 0.730–0.755, SGD-UAP 0.787–0.802 over seeds 0–2, 1,000 held-out CIFAR-10 images);
- the compiled gradient step (torch.compile, mode "reduce-overhead": CUDA graphs) equals the eager one, and no
  graph was skipped;
- the forward-only batch from the memory probe fits, and a real out-of-memory (the allocator capped with
  ``torch.cuda.set_per_process_memory_fraction``) makes evaluation halve its batch and the gradient step split its
  batch into chunks, with the same results;
- the UI's job path: two runs on one GPU queue (never both running) and both finish;
- every method of the registry runs on CUDA (bf16, compiled where it can be) like on the CPU.
"""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch

from uap_core import evaluation
from uap_core.algorithms import ALGORITHMS, get_algorithm
from uap_core.algorithms.base import AttackSetup
from uap_core.images import load_images
from uap_core.models import load_model
from uap_core.params import parse_params
from uap_core.run import Run, RunConfig, prepare_model

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)")]

EPS = 8 / 255
CUDA = torch.device("cuda")
CIFAR_RUNS = {  # CIFAR-10 ResNet-20, 1,000 fit / 1,000 held-out images
    "sga": dict(epochs=2, params={"batch_size": 100, "minibatch_size": 10, "inner_passes": 4}),  # 20 outer steps
    "sgd_uap": dict(epochs=5, params={"batch_size": 100}),  # 50 steps
}
MARGIN = {"fp32": 0.03, "bf16": 0.05}


@pytest.fixture(scope="module")
def cifar_images(cifar_npz):
    images = load_images(cifar_npz, 32, 32)
    assert len(images) == 2000
    return images


@pytest.fixture(scope="module")
def cpu_results(cifar_images):
    """The CPU (fp32) result of each CIFAR run, computed once."""
    cache: dict[str, object] = {}

    def result(algorithm: str):
        if algorithm not in cache:
            cache[algorithm] = Run(_cifar_config(algorithm, cifar_images, "cpu", "fp32", "off"), images=cifar_images).run_to_end()
        return cache[algorithm]
    return result


def _cifar_config(algorithm: str, images, device: str, precision: str, compile: str) -> RunConfig:
    return RunConfig(model="cifar_resnet20", algorithm=algorithm, eps=EPS, images=images.source,
                     fit=1000, holdout=1000, seed=0, device=device, precision=precision, compile=compile,
                     eval_every=1_000_000, keep="last", **CIFAR_RUNS[algorithm])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("algorithm", list(CIFAR_RUNS))
def test_cuda_run_matches_the_cpu_run(algorithm, precision, cifar_images, cpu_results):
    compile = "auto" if precision == "bf16" else "off"  # bf16 + auto: what a GPU run does by default
    cuda = Run(_cifar_config(algorithm, cifar_images, "cuda", precision, compile), images=cifar_images).run_to_end()
    cpu = cpu_results(algorithm)
    agreement = (torch.sign(cuda.delta) == torch.sign(cpu.delta)).float().mean().item()
    print(f"{algorithm} {precision}: held-out fooling ratio cuda {cuda.evaluation.fooling_ratio:.3f} vs cpu "
          f"{cpu.evaluation.fooling_ratio:.3f} (random {cuda.random_evaluation.fooling_ratio:.3f}); signs of δ agree "
          f"on {agreement:.3f}; {cuda.seconds:.1f} s vs {cpu.seconds:.1f} s; compiled {cuda.info['compiled']}")
    assert cuda.info["device"].startswith("cuda") and cuda.info["precision"] == precision
    assert cuda.info["compiled"] is (precision == "bf16") and "compile_error" not in cuda.info
    assert cuda.steps == cpu.steps and cuda.reason == "completed"
    assert cuda.delta.abs().max().item() <= EPS + 1e-7
    assert cuda.evaluation.count == cpu.evaluation.count == 1000
    assert abs(cuda.evaluation.fooling_ratio - cpu.evaluation.fooling_ratio) <= MARGIN[precision]
    assert cuda.evaluation.fooling_ratio >= 2 * cuda.random_evaluation.fooling_ratio
    # the clean predictions agree with the CPU's (bf16 may flip a near-tie or two)
    clean_agreement = (cuda.evaluation.clean_labels == cpu.evaluation.clean_labels).float().mean().item()
    assert clean_agreement >= (0.999 if precision == "fp32" else 0.98), clean_agreement


# ---------------------------------------------------------------------------------------------- compiled = eager
@pytest.fixture(scope="module")
def resnet20_cuda():
    return prepare_model(load_model("cifar_resnet20", CUDA), CUDA)


def _sga(model, pixels: torch.Tensor, precision: str, compile: bool):
    clean = evaluation.predict_labels(model, pixels, None, precision)
    setup = AttackSetup(model, pixels, clean, EPS, "linf", None, torch.Generator().manual_seed(0), precision, compile)
    sga = get_algorithm("sga")
    return sga(setup, parse_params(sga.Params, {"batch_size": 20, "minibatch_size": 10, "inner_passes": 2}))


@pytest.mark.parametrize("precision, gradient_tolerance, delta_tolerance", [("fp32", 5e-3, 0.01),
                                                                           ("bf16", 5e-2, 0.05)])
def test_compiled_cuda_graph_step_equals_the_eager_step(precision, gradient_tolerance, delta_tolerance,
                                                        cifar_images, resnet20_cuda):
    from torch._dynamo.utils import counters

    counters.clear()
    pixels = cifar_images.pixels[:60].to(CUDA)
    eager, compiled = _sga(resnet20_cuda, pixels, precision, False), _sga(resnet20_cuda, pixels, precision, True)
    delta = torch.empty(3, 32, 32).uniform_(-EPS, EPS, generator=torch.Generator().manual_seed(1)).to(CUDA)
    batch = torch.arange(20, device=CUDA)
    g_eager, loss_eager, fooled_eager = eager.gradient(batch, delta)
    for _ in range(3):  # the first call compiles and records, the later ones replay the graphs
        g_compiled, loss_compiled, fooled_compiled = compiled.gradient(batch, delta)
    assert compiled.compiled and compiled.compile_error is None
    assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])  # really CUDA graphs
    relative = ((g_compiled - g_eager).norm() / g_eager.norm()).item()
    print(f"{precision}: compiled vs eager gradient, relative difference {relative:.2e}; loss {loss_compiled.item():.4f}"
          f" vs {loss_eager.item():.4f}")
    assert relative < gradient_tolerance
    assert loss_compiled.item() == pytest.approx(loss_eager.item(), rel=gradient_tolerance)
    assert abs(fooled_compiled.item() - fooled_eager.item()) <= (0 if precision == "fp32" else 1)
    for _ in range(3):  # three whole SGA steps (4 inner steps each) from the same start
        eager_stats, compiled_stats = eager.step(batch), compiled.step(batch)
    differing = (eager.delta != compiled.delta).float().mean().item()
    print(f"{precision}: δ after 3 SGA steps differs on {differing:.4f} of its entries")
    assert differing < delta_tolerance
    assert compiled_stats["loss"] == pytest.approx(eager_stats["loss"], rel=10 * gradient_tolerance)


# ---------------------------------------------------------------------------------------------- memory
def test_memory_probe_batch_fits_and_out_of_memory_halves_it():
    """VGG16 (random weights) on 512-pixel images in bf16: the probed batch is one forward that fits in the free
    memory; with the allocator capped below what that forward needs, evaluation halves the batch and goes on."""
    model = prepare_model(load_model("vgg16", CUDA, pretrained=False, download=False), CUDA)
    shape = (3, 512, 512)
    evaluation._cuda_batch_cache.clear()
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(CUDA)
    batch = evaluation.default_batch_size(model, shape, "bf16")
    key = (id(model), shape, "bf16")
    assert 1 < batch <= evaluation.MAX_BATCH
    pixels = torch.randint(0, 256, (batch, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    pixels = pixels.to(CUDA)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(CUDA)
    before = torch.cuda.memory_allocated(CUDA)
    logits = evaluation.predict_logits(model, pixels, None, "bf16")  # one forward of `batch` images
    peak = torch.cuda.max_memory_allocated(CUDA) - before
    print(f"probe: batch {batch} of {shape} images; that forward took {peak / 2**30:.2f} GiB of "
          f"{free / 2**30:.1f} GiB free")
    assert evaluation._cuda_batch_cache[key] == batch  # no out-of-memory, no halving
    assert peak <= free * evaluation.CUDA_MEMORY_SHARE * 1.25
    if batch < evaluation.MAX_BATCH:  # not clamped: the probe uses the memory rather than guessing small
        assert peak >= 0.25 * free * evaluation.CUDA_MEMORY_SHARE

    torch.cuda.empty_cache()
    cap = torch.cuda.memory_reserved(CUDA) + peak // 4  # a quarter of what the forward needs
    torch.cuda.set_per_process_memory_fraction(cap / total, CUDA)
    try:
        capped = evaluation.predict_logits(model, pixels, None, "bf16")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, CUDA)
    smaller = evaluation._cuda_batch_cache[key]
    print(f"capped at {cap / 2**30:.2f} GiB: batch {batch} → {smaller}")
    assert smaller < batch and capped.shape == logits.shape
    assert ((capped - logits).norm() / logits.norm()).item() < 2e-2  # same logits (bf16, other batch size)
    evaluation._cuda_batch_cache.clear()


def test_gradient_step_out_of_memory_splits_the_batch(imagenet_200):
    """EfficientNet-Lite0 on 100 real ImageNet images, one SGD-UAP step of 100 images in fp32: capped below the
    memory that step took, the run splits the batch into chunks (same gradient) instead of failing."""
    model = prepare_model(load_model("efficientnet_lite0", CUDA), CUDA)
    images = load_images(imagenet_200, 224, 256, list(model.spec.class_names))
    config = RunConfig(model="efficientnet_lite0", algorithm="sgd_uap", images=str(imagenet_200), fit=100,
                       holdout=100, epochs=1, device="cuda", precision="fp32", compile="off", eps=10 / 255,
                       params={"batch_size": 100}, keep="last")
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(CUDA)
    torch.cuda.reset_peak_memory_stats(CUDA)
    reference = Run(config, model=model, images=images).run_to_end()
    peak = torch.cuda.max_memory_allocated(CUDA)
    torch.cuda.empty_cache()
    _free, total = torch.cuda.mem_get_info(CUDA)
    cap = torch.cuda.memory_reserved(CUDA) + (peak - base) * 0.4
    torch.cuda.set_per_process_memory_fraction(cap / total, CUDA)
    try:
        run = Run(config, model=model, images=images)
        result = run.run_to_end()
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, CUDA)
        evaluation._cuda_batch_cache.clear()
    chunk = run.algorithm.chunk_size
    differing = (result.delta != reference.delta).float().mean().item()
    print(f"step of 100 took {(peak - base) / 2**30:.2f} GiB; capped at {cap / 2**30:.2f} GiB: chunks of {chunk}; "
          f"δ differs on {differing:.5f} of its entries")
    assert chunk is not None and chunk < 100
    assert result.reason == "completed" and result.steps == 1
    assert result.delta.abs().max().item() <= 10 / 255 + 1e-7
    assert differing < 0.001  # a sum in another order may flip the sign of a near-zero entry, nothing else


# ---------------------------------------------------------------------------------------------- the UI's jobs
def test_two_ui_jobs_queue_on_the_gpu(cifar_images):
    from uap_ui import jobs

    config = dataclasses.replace(_cifar_config("sga", cifar_images, "cuda", "bf16", "off"), fit=500, holdout=500)
    first = jobs.Job(Run(config, images=cifar_images)).start()
    second = jobs.Job(Run(dataclasses.replace(config, seed=1), images=cifar_images)).start()
    seen = set()
    deadline = time.monotonic() + 300
    while (first.active or second.active) and time.monotonic() < deadline:
        seen.add((first.state, second.state))
        time.sleep(0.002)
    print("states seen (first, second):", sorted(seen))
    assert first.state == jobs.DONE and second.state == jobs.DONE, (first.snapshot().error, second.snapshot().error)
    assert (jobs.RUNNING, jobs.RUNNING) not in seen
    assert (jobs.RUNNING, jobs.QUEUED) in seen or (jobs.QUEUED, jobs.RUNNING) in seen
    for job in (first, second):
        result = job.snapshot().result
        assert result.info["device"].startswith("cuda") and result.delta.abs().max().item() <= EPS + 1e-7
        assert result.evaluation.fooling_ratio > result.random_evaluation.fooling_ratio


# ---------------------------------------------------------------------------------------------- every method
@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_every_method_runs_on_cuda_like_on_the_cpu(algorithm, cifar_images):
    """Each method on CIFAR-10 ResNet-20 (500 fit / 500 held out, 8/255) with the same budget of 3,000
    image-gradients on the CPU and on CUDA (bf16, compiled where the method has a gradient step): the CUDA run
    completes within the budget and eps, beats random noise, and lands within 0.1 of the CPU run's held-out
    fooling ratio (the same seed draws the same batches on both). SGA and SGD-UAP take batches of 50 (at the
    paper's 250, 3,000 image-gradients are 3 SGA steps: δ still far from its budget). The CPU halves, measured on
    2 cores: from UAP 0.47 and SGA 0.56 to SV-UAP 0.82, against 0.29 for random noise."""
    small_batches = {"sga": {"batch_size": 50}, "sgd_uap": {"batch_size": 50}}
    results = {}
    for device, precision in (("cpu", "fp32"), ("cuda", "bf16")):
        config = RunConfig(model="cifar_resnet20", algorithm=algorithm, eps=EPS, images=cifar_images.source, fit=500,
                           holdout=500, seed=0, device=device, precision=precision, keep="last",
                           max_image_gradients=3000, eval_every=1_000_000, params=small_batches.get(algorithm, {}))
        results[device] = Run(config, images=cifar_images).run_to_end()
    cpu, cuda = results["cpu"], results["cuda"]
    print(f"{algorithm}: cuda {cuda.evaluation.fooling_ratio:.3f} cpu {cpu.evaluation.fooling_ratio:.3f} random "
          f"{cuda.random_evaluation.fooling_ratio:.3f}; {cuda.seconds:.1f} s vs {cpu.seconds:.1f} s")
    assert cuda.info["device"].startswith("cuda") and "compile_error" not in cuda.info
    assert cuda.delta.abs().max().item() <= EPS + 1e-7
    assert cuda.info["image_gradients"] >= 3000 or cuda.reason != "budget"
    assert cuda.evaluation.fooling_ratio > cuda.random_evaluation.fooling_ratio
    assert abs(cuda.evaluation.fooling_ratio - cpu.evaluation.fooling_ratio) <= 0.1
