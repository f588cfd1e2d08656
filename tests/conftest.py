"""Shared fixtures: the test data in ../shared (CI has it; a user's clone may not) and real models."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see uap_core/__init__.py

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("UAP_SHARED_DIR") or REPO.parent / "shared")

torch.set_num_threads(max(1, os.cpu_count() or 1))

# The download cache of uap_core.download: a fresh folder for the test session, so no file a developer fetched
# earlier (~/.cache/uap_explorer) makes a "needs download" test pass or fail by accident.
if "UAP_CACHE_DIR" not in os.environ:
    import tempfile  # noqa: E402

    os.environ["UAP_CACHE_DIR"] = tempfile.mkdtemp(prefix="uap-test-cache-")


def shared_path(relative: str) -> Path:
    """A path under ../shared; skips with a reason when absent — but fails in CI, which always has it."""
    path = SHARED / relative
    if not path.exists():
        message = f"test data {path} is absent (set UAP_SHARED_DIR to the folder holding data/ and models/)"
        if os.environ.get("CI"):
            pytest.fail(message + " — CI must have it")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def imagenet_200() -> Path:
    return shared_path("data/imagenet-samples-200")


@pytest.fixture(scope="session")
def cifar_npz() -> Path:
    return shared_path("data/cifar10-test-2000.npz")


@pytest.fixture(scope="session")
def lite0():
    from uap_core.models import load_model

    return load_model("efficientnet_lite0", "cpu")
