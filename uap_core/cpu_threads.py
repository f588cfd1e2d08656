"""One CPU thread for small forward/backward passes while OpenMP waits passively.

uap_core sets ``OMP_WAIT_POLICY=PASSIVE`` (see ``uap_core/__init__.py``): on a 2-core machine shared with a
server, a browser or another run, spinning OpenMP threads slow every process several times over. The price is
paid on small tensors: each parallel region then wakes the sleeping threads, and on a pass over a few 32×32
images that costs more than the second thread gains. Measured on 2 cores (``python bench/threads.py``, median of
10 forward + input-gradient passes): 10 CIFAR-10 images through ResNet-56 take ~105 ms on one thread and ~160–200
ms on two passive ones (ResNet-20: ~50 against ~60–75 ms); at 100 images two threads win (ResNet-20 ~290 against
~420 ms), as they do on every ImageNet-sized batch.

:func:`threads_for` runs a block on one thread when its input holds fewer than :data:`SMALL_INPUT` values, the
wait policy is passive and the caller is the main thread (the CLI, the studies, the tests); otherwise it changes
nothing. PyTorch's thread count is per OS thread, but a thread's first operation copies the count last set by any
thread: switching it in a server's worker threads would leave a session's thread born during another's small
pass on one thread for good, so the app's sessions keep theirs.

The numbers agree to float rounding: a reduction split over one thread instead of two sums in another order, so
gradients and losses may differ in their last bits (~1e-7 relative) — as between two machines with different
core counts. ``bench/fingerprint.py --threads 2`` before and after: every method's δ bit for bit the same, SGA's
logged cosines differing in the 7th digit.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

SMALL_INPUT = 1 << 17
"""Input values (images × channels × height × width) below which one thread is faster: ~42 CIFAR images,
under one ImageNet image."""


def passive_waits() -> bool:
    """True when OpenMP's idle threads sleep (``OMP_WAIT_POLICY=PASSIVE``, uap_core's default)."""
    return os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE"


@contextmanager
def threads_for(input_values: int, device: torch.device) -> Iterator[int]:
    """Run the block with the CPU thread count that suits a pass over ``input_values`` input values (images ×
    channels × height × width) on ``device``; yields the count in use."""
    current = torch.get_num_threads()
    if (device.type != "cpu" or current == 1 or input_values >= SMALL_INPUT or not passive_waits()
            or threading.current_thread() is not threading.main_thread()):
        yield current
        return
    torch.set_num_threads(1)
    try:
        yield 1
    finally:
        torch.set_num_threads(current)
