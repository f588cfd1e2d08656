"""CPU threads for small gradient passes: one thread against all of them, side by side in one process.

The forward + input-gradient backward of B images (the cost of one SGA inner step or one SGD-UAP chunk) under
uap_core's OpenMP setting (passive waits), timed with 1 thread, with all threads, and as the core runs it
(``uap_core.cpu_threads.threads_for``: one thread below SMALL_INPUT input values, all of them above):

    python bench/threads.py                      # CIFAR-10 ResNet-20/56 at B 10 and 100, EfficientNet-Lite0 at 10

Prints a Markdown table (milliseconds per pass, median of the repeats).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

try:
    import uap_core  # noqa: F401 - first: sets OMP_WAIT_POLICY before torch is loaded
    import torch

    from uap_core.cpu_threads import SMALL_INPUT, passive_waits, threads_for
    from uap_core.models import get_spec, load_model
except ImportError as missing:  # pragma: no cover - a checkout without `pip install -e .`
    sys.exit(f"bench/threads.py needs the uap_core package installed: `pip install -e .` ({missing})")

CASES = (("cifar_resnet20", 10), ("cifar_resnet20", 100), ("cifar_resnet56", 10), ("cifar_resnet56", 100),
         ("efficientnet_lite0", 10))


def pass_seconds(model: torch.nn.Module, images: torch.Tensor, threads: int | None, repeats: int) -> float:
    """Median seconds of one forward + backward to a δ (3, H, W) over ``images`` (B, 3, H, W); threads None: as the
    core runs it."""
    delta = torch.zeros(images.shape[1:])
    times = []
    full = torch.get_num_threads()
    for i in range(repeats + 1):
        leaf = delta.clone().requires_grad_(True)
        start = time.perf_counter()
        if threads is None:
            with threads_for(images.numel(), images.device):
                model((images + leaf).clamp(0, 1)).logsumexp(1).sum().backward()
        else:
            torch.set_num_threads(threads)
            model((images + leaf).clamp(0, 1)).logsumexp(1).sum().backward()
            torch.set_num_threads(full)
        if i:  # the first pass warms up
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    full = torch.get_num_threads()
    print(f"torch {torch.__version__}, {full} threads, passive waits: {passive_waits()}, "
          f"SMALL_INPUT {SMALL_INPUT:,} values\n")
    print(f"| model | B | input values | 1 thread ms | {full} threads ms | threads_for ms |")
    print("|---|---:|---:|---:|---:|---:|")
    generator = torch.Generator().manual_seed(0)
    for name, batch in CASES:
        model = load_model(name, "cpu")
        size = get_spec(name).input_size
        images = torch.rand((batch, 3, size, size), generator=generator)
        repeats = max(2, args.repeats // 4) if size > 64 else args.repeats
        row = [pass_seconds(model, images, threads, repeats) * 1000 for threads in (1, full, None)]
        print(f"| `{name}` | {batch} | {images.numel():,} | " + " | ".join(f"{ms:.0f}" for ms in row) + " |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
