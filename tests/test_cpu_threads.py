"""uap_core.cpu_threads: one CPU thread for small passes, the count restored, shared safely between threads."""

from __future__ import annotations

import threading

import pytest
import torch

from uap_core.cpu_threads import SMALL_INPUT, threads_for

CPU = torch.device("cpu")


@pytest.fixture
def two_threads(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_small_passes_run_on_one_thread_and_the_count_comes_back(two_threads):
    with threads_for(10 * 3 * 32 * 32, CPU) as used:
        assert used == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with threads_for(SMALL_INPUT, CPU) as used:  # large: unchanged
        assert used == 2 and torch.get_num_threads() == 2
    with pytest.raises(RuntimeError):  # an error inside still restores the count
        with threads_for(100, CPU):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == 2


def test_spinning_waits_keep_every_thread(two_threads, monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    with threads_for(100, CPU) as used:
        assert used == 2 and torch.get_num_threads() == 2


def test_other_threads_keep_their_count(two_threads):
    """A server's worker threads are left alone: a thread's first operation copies the last count set anywhere."""
    seen = []

    def small_pass() -> None:
        torch.set_num_threads(2)
        with threads_for(100, CPU) as used:
            seen.append((used, torch.get_num_threads()))

    worker = threading.Thread(target=small_pass)
    worker.start()
    worker.join(timeout=10)
    assert seen == [(2, 2)]


def test_the_gradient_on_one_thread_matches_two_threads_to_rounding(two_threads, cifar_npz):
    import numpy as np

    from uap_core.models import load_model

    model = load_model("cifar_resnet20", "cpu")
    images = torch.from_numpy(np.load(cifar_npz)["x"][:10]).permute(0, 3, 1, 2).float() / 255
    delta = torch.full((3, 32, 32), 4 / 255)

    def gradient() -> torch.Tensor:
        leaf = delta.clone().requires_grad_(True)
        torch.nn.functional.cross_entropy(model((images + leaf).clamp(0, 1)),
                                          torch.arange(10) % 10).backward()
        return leaf.grad

    both = gradient()
    with threads_for(images.numel(), CPU):
        one = gradient()
    assert ((one - both).abs().max() / both.abs().max()).item() < 1e-5
    assert (torch.sign(one) != torch.sign(both)).float().mean() < 1e-3
