"""The run interface: events, stop, out-of-memory, determinism, validation — on CIFAR ResNet-20 (fast)."""

import json
import re
import threading

import pytest
import torch

from uap_core.artifacts import load_uap, save_uap
from uap_core.errors import ParameterError
from uap_core.params import describe
from uap_core.run import Run, RunConfig


@pytest.fixture(scope="module")
def cifar_config(cifar_npz):
    return RunConfig(model="cifar_resnet20", algorithm="sgd_uap", images=str(cifar_npz), fit=200, holdout=300,
                     epochs=4, device="cpu", params={"batch_size": 25}, eval_every=8, eps="8/255")


def test_events_and_result(cifar_config):
    run = Run(cifar_config)
    events = list(run.events())
    kinds = [e.kind for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert kinds.count("step") == 32 and kinds.count("eval") == 5  # steps 1, 8, 16, 24, 32
    steps = [e for e in events if e.kind == "step"]
    assert [e.step for e in steps] == list(range(1, 33))
    for key in ("loss", "batch_fooling_ratio", "grad_cosine", "quantisation_error", "linf", "l2",
                "images_per_second", "saturation", "sign_ops", "sign_flip_rate"):
        assert key in steps[-1].data
    assert steps[-1].data["sign_ops"] == 32
    evaluation = [e for e in events if e.kind == "eval"][-1].data
    assert 0 <= evaluation["fooling_ratio"] <= 1
    counts = evaluation["heldout"]["histogram"]["counts"]
    assert sum(c[2] for c in counts) <= 300 and counts[0][1] in ("airplane", "automobile", "bird", "cat", "deer",
                                                                 "dog", "frog", "horse", "ship", "truck")
    result = run.result
    assert result.reason == "completed" and result.steps == 32
    assert result.delta.shape == (3, 32, 32) and result.delta.abs().max() <= 8 / 255 + 1e-7
    summary = events[-1].data
    assert summary["fooling_ratio"] == result.evaluation.fooling_ratio
    # UAP beats same-norm random noise on held-out images by a wide margin
    assert summary["fooling_ratio"] > 1.5 * summary["random_fooling_ratio"]
    assert summary["clean_accuracy"] > 0.7 and summary["attacked_accuracy"] < summary["clean_accuracy"]


def test_metadata_round_trips_through_an_artifact(cifar_config, tmp_path):
    run = Run(RunConfig(**{**cifar_config.__dict__, "epochs": 1}))
    result = run.run_to_end()
    path = save_uap(result.delta, result.metadata(), tmp_path / "r20.safetensors")
    loaded = load_uap(path, expected_size=(32, 32), eps=8 / 255)
    assert torch.equal(loaded.delta, result.delta)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["model"] == "cifar_resnet20" and meta["algorithm"] == "sgd_uap"
    assert meta["config"]["params"] == {"batch_size": 25} and meta["params"]["beta"] == 9.0
    assert meta["summary"]["fooling_ratio"] == pytest.approx(result.evaluation.fooling_ratio)
    assert any(h["kind"] == "step" for h in meta["history"])
    assert "torch" in meta["library_versions"]


def test_same_seed_same_delta_other_seed_differs(cifar_config):
    short = {**cifar_config.__dict__, "epochs": 1, "algorithm": "sga",
             "params": {"batch_size": 50, "minibatch_size": 10}, "epochs": 1}
    first = Run(RunConfig(**short)).run_to_end()
    again = Run(RunConfig(**short)).run_to_end()
    other = Run(RunConfig(**{**short, "seed": 1})).run_to_end()
    assert torch.equal(first.last_delta, again.last_delta)
    assert not torch.equal(first.last_delta, other.last_delta)


def test_stop_from_another_thread_keeps_the_best_so_far(cifar_config):
    run = Run(RunConfig(**{**cifar_config.__dict__, "epochs": 50}))
    seen = []

    def consume():
        for event in run.events():
            seen.append(event)
            if event.kind == "step" and event.step == 3:
                threading.Thread(target=run.stop).start()

    worker = threading.Thread(target=consume)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive()
    result = run.result
    assert result.reason == "stopped" and 3 <= result.steps < 10
    assert seen[-1].kind == "done" and seen[-2].kind == "eval"  # the δ at the stop was evaluated
    assert result.delta.abs().max() > 0 and result.delta.abs().max() <= 8 / 255 + 1e-7


def test_a_time_limit_shorter_than_the_preparation_still_makes_one_step(cifar_config):
    """The time limit counts from the start, preparation included (clean passes, the random-noise baseline); on a
    loaded class server the preparation alone can outlast the demo's limit. The run then makes one step and
    evaluates it, instead of ending with the untouched δ and no step; later steps are cut as before."""
    run = Run(RunConfig(**{**cifar_config.__dict__, "epochs": 50, "max_seconds": 1e-6}))
    events = list(run.events())
    result = run.result
    assert result.reason == "time limit" and result.steps == 1
    assert [(e.kind, e.step) for e in events if e.kind in ("step", "eval")] == [("step", 1), ("eval", 1)]
    assert result.delta.abs().max() > 0 and result.delta.abs().max() <= 8 / 255 + 1e-7
    assert events[-1].data["fooling_ratio"] == result.evaluation.fooling_ratio


def test_out_of_memory_backs_off_then_stops_keeping_delta(cifar_config, monkeypatch):
    """Simulated CUDA out-of-memory: a forward of more than 12 images fails. Evaluation halves its batch,
    a gradient step splits its batch into chunks; when even one image fails, the run stops and keeps δ."""
    from uap_core.models import Classifier

    original = Classifier.forward
    seen_batches = []

    def small_gpu(self, x):
        seen_batches.append(len(x))
        if len(x) > 12:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(self, x)

    monkeypatch.setattr(Classifier, "forward", small_gpu)
    run = Run(RunConfig(**{**cifar_config.__dict__, "epochs": 2}))
    result = run.run_to_end()
    assert result.reason == "completed" and result.steps == 16
    assert run.algorithm.chunk_size == 12 and max(seen_batches) > 12
    assert 0 < result.evaluation.fooling_ratio <= 1

    def no_memory_for_gradients(self, x):
        if torch.is_grad_enabled():
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(self, x)

    monkeypatch.setattr(Classifier, "forward", no_memory_for_gradients)
    run = Run(RunConfig(**{**cifar_config.__dict__, "epochs": 2}))
    result = run.run_to_end()
    assert result.reason == "out of memory" and result.steps == 0
    assert result.delta.shape == (3, 32, 32) and result.evaluation.count == 300


@pytest.mark.parametrize("changes, message", [
    ({"eps": 0}, r"eps = 0 is out of range; allowed \(0, 1\]"),
    ({"eps": -0.1}, "eps = -0.1 is out of range"),
    ({"eps": 1.5}, r"eps = 1.5 is out of range; allowed \(0, 1\]"),
    ({"eps": "ten"}, "eps must be a number"),
    ({"eps": "nan"}, "finite"),
    ({"model": "resnet9000"}, "unknown model"),
    ({"algorithm": "fgsm"}, "unknown algorithm"),
    ({"target": 1000}, r"target class = 1000 is out of range; allowed \[0, 999\]"),
    ({"target": -1}, "target class = -1 is out of range"),
    ({"algorithm": "uap", "target": 3}, "untargeted only"),
    ({"epochs": 0}, r"epochs = 0 is out of range; allowed \[1,"),
    ({"fit": -5}, "fit = -5 is out of range"),
    ({"params": {"batch_size": 0}}, r"batch_size = 0 is out of range; allowed \[1, 100000\]"),
    ({"params": {"batch_size": -1}}, "batch_size = -1"),
    ({"norm": "l1"}, "norm 'l1' is not allowed"),
    ({"device": "tpu"}, "device"),
    ({"keep": "first"}, "keep 'first' is not allowed; choose one of best, last"),
    ({"holdout_views": 65}, r"holdout_views = 65 is out of range; allowed \[0, 64\]"),
    ({"augment": 1.5}, "augment must be a whole number"),
])
def test_bad_parameters_are_rejected_with_the_allowed_range(changes, message):
    with pytest.raises(ParameterError, match=message):
        Run(RunConfig(**changes))


NUMERIC_SETTINGS = [spec for spec in describe(RunConfig) if spec["type"] in ("int", "float") and spec["max"]]


@pytest.mark.parametrize("spec", NUMERIC_SETTINGS, ids=[spec["name"] for spec in NUMERIC_SETTINGS])
def test_validation_follows_the_declared_ranges(spec):
    """RunConfig.validated() checks every setting against its declaration (param(...)): the bounds themselves pass,
    one past either bound is refused with the setting's name and its allowed range."""
    name, low, high = spec["name"], spec["min"], spec["max"]
    given = str(high) if high < 2**53 else high  # strings parsed, as from the CLI (as floats: exact below 2^53)
    assert getattr(RunConfig(**{name: given}).validated(), name) == high
    with pytest.raises(ParameterError, match=re.escape(f"{name} = {high + 1:g} is out of range; allowed [{low:g}, ")):
        RunConfig(**{name: high + 1}).validated()
    if low is not None:
        assert getattr(RunConfig(**{name: low}).validated(), name) == low
        with pytest.raises(ParameterError, match=re.escape(f"{name} = {low - 1:g} is out of range")):
            RunConfig(**{name: low - 1}).validated()
    if spec["type"] == "int":
        with pytest.raises(ParameterError, match=f"{name} must be a whole number"):
            RunConfig(**{name: low + 0.5}).validated()


def test_too_many_images_requested(cifar_npz):
    run = Run(RunConfig(model="cifar_resnet20", images=str(cifar_npz), fit=1500, holdout=1000, device="cpu"))
    with pytest.raises(ParameterError, match="2000"):
        list(run.events())


def test_keep_last_returns_the_final_delta_and_views_measure_held_out(cifar_config):
    """keep="last": the returned δ is the last one and no fit-set evaluation is made; holdout_views: the held-out
    set is that many views of each held-out image (none of them a fit image), and the run measures on them."""
    import dataclasses

    config = dataclasses.replace(cifar_config, keep="last", holdout_views=3, fit=100, holdout=20, epochs=1)
    run = Run(config)
    events = list(run.events())
    result = run.result
    assert torch.equal(result.delta, result.last_delta) and result.best_step == result.steps == 4
    evals = [e.data for e in events if e.kind == "eval"]
    assert all(e["is_best"] and e["fit_fooling_ratio"] != e["fit_fooling_ratio"] for e in evals)  # NaN: not made
    assert len(run.holdout_set) == 60 == result.evaluation.count
    photos = {name.rsplit("#", 1)[0] for name in run.holdout_set.names}
    assert len(photos) == 20 and not photos & set(run.fit_set.names)
    assert result.evaluation.fooling_ratio == evals[-1]["fooling_ratio"]  # the last evaluation, not redone


def test_keep_best_chooses_delta_on_fit_images_only():
    """keep="best" picks the step with the best *fit-set* fooling ratio, never one chosen on held-out images.

    On the toy linear classifier (tests/toys.py): a first run records δ and the fit-set fooling ratio at every
    step. The held-out images are then replaced by images that the δ of one other step fools and the δ of no other
    step does (found among random images), so a choice made on held-out images — or on any mix of held-out and fit
    figures — would return that step. A second run with the same fit images and seed follows the same trajectory
    and must still return the fit-best δ."""
    from toys import toy_model

    from uap_core.images import ImageSet

    fit, holdout = 40, 40
    pixels = torch.randint(40, 216, (fit + holdout, 3, 4, 4), generator=torch.Generator().manual_seed(0),
                           dtype=torch.uint8)
    images = ImageSet(pixels, torch.zeros(fit + holdout, dtype=torch.long), [f"toy{i}" for i in range(fit + holdout)],
                      source="toy")
    config = RunConfig(model="cifar_resnet20", algorithm="sgd_uap", eps=0.15, images="toy", fit=fit, holdout=holdout,
                       seed=0, device="cpu", params={"batch_size": 10, "step_size": 0.03}, epochs=3, eval_every=1)

    def run_recording_deltas(image_set: ImageSet):
        model = toy_model()
        run = Run(config, model=model, images=image_set)
        deltas: dict[int, torch.Tensor] = {}
        result = run.run_to_end(lambda e: deltas.update({e.step: run.algorithm.delta.clone()}) if e.kind == "eval"
                                else None)
        evaluations = {e["step"]: e for e in result.history if e["kind"] == "eval"}
        return model, result, deltas, evaluations

    model, first, deltas, evaluations = run_recording_deltas(images)
    steps = sorted(evaluations)
    assert steps == list(range(1, 13))  # every step evaluated
    fit_ratios = [evaluations[s]["fit_fooling_ratio"] for s in steps]
    fit_best = steps[fit_ratios.index(max(fit_ratios))]  # the first step with the best fit-set fooling ratio
    assert first.best_step == fit_best

    # held-out images fooled by exactly one other step's δ
    pool = torch.randint(0, 256, (50_000, 3, 4, 4), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    with torch.no_grad():
        x = pool.float() / 255
        clean = model(x).argmax(1)
        fooled = torch.stack([model((x + deltas[s]).clamp(0, 1)).argmax(1) != clean for s in steps])
    only = {s: fooled[i] & ~torch.cat([fooled[:i], fooled[i + 1:]]).any(0) for i, s in enumerate(steps)}
    decoy = max((s for s in steps if s != fit_best), key=lambda s: int(only[s].sum()))
    assert int(only[decoy].sum()) >= holdout
    _fit_set, held_out = images.split(fit, holdout, 0)
    positions = torch.tensor([images.names.index(name) for name in held_out.names])
    crafted = ImageSet(pixels.clone(), images.labels, images.names, source="toy")
    crafted.pixels[positions] = pool[only[decoy].nonzero()[:holdout, 0]]

    _model, second, second_deltas, second_evaluations = run_recording_deltas(crafted)
    assert [second_evaluations[s]["fit_fooling_ratio"] for s in steps] == fit_ratios  # the same trajectory
    held_out_ratios = {s: second_evaluations[s]["fooling_ratio"] for s in steps}
    assert held_out_ratios[decoy] >= 0.9 and max(r for s, r in held_out_ratios.items() if s != decoy) <= 0.1
    assert second.best_step == fit_best != decoy
    assert torch.equal(second.delta, second_deltas[fit_best])
    assert second.evaluation.fooling_ratio == held_out_ratios[fit_best]
