"""The memo of clean predictions (uap_core.memo): a repeated run skips its clean forward passes and gets the
same answer; a changed model or changed images are never answered from it."""

from __future__ import annotations

import torch

from uap_core import memo
from uap_core.models import load_model
from uap_core.run import Run, RunConfig


def _config(cifar_npz, **changes) -> RunConfig:
    fields = dict(model="cifar_resnet20", algorithm="sgd_uap", images=str(cifar_npz), fit=100, holdout=200,
                  eps=8 / 255, epochs=1, seed=3, device="cpu", compile="off", params={"batch_size": 25})
    fields.update(changes)
    return RunConfig(**fields)


def test_a_repeated_run_is_answered_from_the_memo_with_the_same_result(cifar_npz):
    model = load_model("cifar_resnet20", "cpu")
    memo.clear()
    first = Run(_config(cifar_npz), model=model).run_to_end()
    assert (memo.hits, memo.misses) == (0, 3)  # fit logits, held-out clean top-1, random-noise evaluation
    second = Run(_config(cifar_npz), model=model).run_to_end()
    assert (memo.hits, memo.misses) == (3, 3)
    assert torch.equal(first.delta, second.delta)
    assert first.evaluation.fooling_ratio == second.evaluation.fooling_ratio
    assert first.random_evaluation.fooling_ratio == second.random_evaluation.fooling_ratio
    assert torch.equal(first.random_evaluation.perturbed_labels, second.random_evaluation.perturbed_labels)
    # the same answer as computing from scratch
    memo.clear()
    fresh = Run(_config(cifar_npz), model=model).run_to_end()
    assert memo.hits == 0 and torch.equal(fresh.delta, second.delta)
    assert fresh.random_evaluation.fooling_ratio == second.random_evaluation.fooling_ratio


def test_other_images_or_a_changed_model_are_computed_again(cifar_npz):
    model = load_model("cifar_resnet20", "cpu")
    memo.clear()
    Run(_config(cifar_npz), model=model).run_to_end()
    Run(_config(cifar_npz, seed=4), model=model).run_to_end()  # another split: other fit and held-out images
    assert memo.hits == 0 and memo.misses == 6
    with torch.no_grad():  # an in-place update of the weights (as a fine-tuning step makes)
        next(model.parameters()).mul_(0.5)
    changed = Run(_config(cifar_npz), model=model).run_to_end()
    assert memo.hits == 0 and memo.misses == 9
    reference = load_model("cifar_resnet20", "cpu")
    with torch.no_grad():
        next(reference.parameters()).mul_(0.5)
    memo.clear()
    recomputed = Run(_config(cifar_npz), model=reference).run_to_end()
    assert changed.random_evaluation.fooling_ratio == recomputed.random_evaluation.fooling_ratio
    assert torch.equal(changed.delta, recomputed.delta)


def test_values_handed_out_are_copies(cifar_npz):
    model = load_model("cifar_resnet20", "cpu").eval()
    pixels = torch.rand(4, 3, 32, 32)
    memo.clear()
    compute = lambda: model(pixels).detach()  # noqa: E731
    first = memo.remember("logits", model, [pixels], None, compute)
    first.zero_()
    second = memo.remember("logits", model, [pixels], None, compute)
    assert memo.hits == 1 and torch.allclose(second, compute()) and second.abs().sum() > 0


def test_a_value_asked_for_by_several_threads_at_once_is_computed_once():
    """Single flight: while one thread computes, the others wait for its value; a failure lets the next compute."""
    import threading
    import time

    model = torch.nn.Linear(2, 2)
    pixels = torch.zeros(4, 2)
    calls = []

    def compute():
        calls.append(threading.get_ident())
        time.sleep(0.3)
        return torch.ones(3)

    memo.clear()
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(memo.remember("x", model, [pixels], None, compute)))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and (memo.misses, memo.hits) == (1, 3)
    assert all(torch.equal(a, torch.ones(3)) for a in answers)

    def fails():
        time.sleep(0.2)
        raise RuntimeError("out of memory")

    errors, values = [], []

    def first():
        try:
            memo.remember("y", model, [pixels], None, fails)
        except RuntimeError as exc:
            errors.append(str(exc))

    failing = threading.Thread(target=first)
    failing.start()
    time.sleep(0.05)
    values.append(memo.remember("y", model, [pixels], None, lambda: torch.full((2,), 7.0)))  # waits, then computes
    failing.join()
    assert errors == ["out of memory"] and torch.equal(values[0], torch.full((2,), 7.0))


def test_warming_a_run_makes_its_clean_passes_so_the_run_itself_computes_none(cifar_npz):
    model = load_model("cifar_resnet20", "cpu")
    memo.clear()
    Run(_config(cifar_npz), model=model).warm()
    assert (memo.hits, memo.misses) == (0, 3)
    warmed = Run(_config(cifar_npz), model=model).run_to_end()
    assert (memo.hits, memo.misses) == (3, 3)
    memo.clear()
    cold = Run(_config(cifar_npz), model=model).run_to_end()
    assert torch.equal(warmed.delta, cold.delta) and warmed.summary()["fooling_ratio"] == cold.summary()["fooling_ratio"]
