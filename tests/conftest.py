"""Shared fixtures: the test data in ../shared (CI has it; a user's clone may not) and real models."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see uap_core/__init__.py

import pytest  # noqa: E402
import torch  # noqa: E402

# The Home page warms its demo in a background thread once per process (uap_ui.runview.warm): off in tests, so
# that no test's memo counts or CPU time depend on which page an earlier test of the same worker opened. The test
# of the warming turns it on (tests/test_ui_apptest.py).
os.environ.setdefault("UAP_WARM_DEMO", "0")

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("UAP_SHARED_DIR") or REPO.parent / "shared")

# Playwright's expect() waits 5 s by default; a browser test's page is slower under the other worker's load (CI's
# 2 cores). A longer wait changes nothing for a check that holds, it only gives a slow page time to get there.
try:
    from playwright.sync_api import expect as _playwright_expect  # noqa: E402
except ImportError:  # the browser tests say so themselves
    pass
else:
    _playwright_expect.set_options(timeout=20_000)

# The cores are shared between pytest-xdist's workers (pytest.ini: -n 2): each worker gets its share, so two workers
# on 2 cores run one thread each instead of four threads fighting over two cores. Alone: every core.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
torch.set_num_threads(max(1, (os.cpu_count() or 1) // _WORKERS))

# The download cache of uap_core.download: a fresh folder for each test process (each xdist worker its own), so no
# file a developer fetched earlier (~/.cache/uap_explorer) or another worker's test fetched makes a "needs
# download" test pass or fail by accident. A folder the developer set is kept.
if "UAP_CACHE_DIR" not in os.environ or os.environ.get("UAP_TEST_CACHE_PID") not in (None, str(os.getpid())):
    import tempfile  # noqa: E402

    os.environ["UAP_CACHE_DIR"] = tempfile.mkdtemp(prefix="uap-test-cache-")
    os.environ["UAP_TEST_CACHE_PID"] = str(os.getpid())


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
