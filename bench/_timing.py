"""What the bench scripts share: their flags, random data of a dataset's shape, runs, and A/B timing.

A/B timing alternates the two sides (A B, B A, A B, ...) after a warm-up, synchronises the device
around every call, and reports each side's median and the median of the paired ratios A/B, which
is robust to load drifting while the bench runs (other processes on the machine).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from energybench import list_plugins
from energybench.config import RunConfig, load_catalogue
from energybench.data.datasets import ImageData, Split, get_dataset
from energybench.storage.store import Store
from energybench.training.loop import Run
from energybench.training.run import prepare

#: Defaults per device type: CPU-sized, and the paper's CIFAR-10 / PreActResNet-18 setting on CUDA.
DEFAULTS = {"cpu": {"dataset": "fashion-mnist", "model": "small-cnn", "eps": 0.1, "n_train": 2048},
            "cuda": {"dataset": "cifar10", "model": "preact-resnet18", "eps": 8 / 255, "n_train": 10000}}


def parser(description: str) -> argparse.ArgumentParser:
    """The flags every bench script takes (defaults depend on --device, see ``DEFAULTS``)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: steadier timings)")
    p.add_argument("--repeats", type=int, default=7, help="timed A/B pairs (default 7)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls of each side first (default 1)")
    p.add_argument("--dataset", choices=list_plugins("dataset"), help="shape of the random data (cpu: fashion-mnist, "
                   "cuda: cifar10)")
    p.add_argument("--model", help="model plugin (cpu: small-cnn, cuda: preact-resnet18)")
    p.add_argument("--n-train", type=int, help="training images per epoch (cpu: 2048, cuda: 10000)")
    p.add_argument("--eps", type=float, help="Linf budget (cpu: 0.1, cuda: 8/255)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--fast", choices=["auto", "on", "off"], default="auto", help="the fast path (fast.enabled)")
    return p


def parse(p: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse the flags, fill the device-dependent defaults and set the torch thread count."""
    args = p.parse_args()
    args.device = torch.device(args.device)
    for key, value in DEFAULTS["cuda" if args.device.type == "cuda" else "cpu"].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    torch.set_num_threads(args.threads)
    return args


def random_data(dataset: str, n_train: int, n_test: int = 512, seed: int = 0) -> ImageData:
    """Random uint8 images and labels shaped like ``dataset`` (no files needed: timing only)."""
    info = get_dataset(dataset)
    g = torch.Generator().manual_seed(seed)

    def split(n: int) -> Split:
        x = torch.randint(0, 256, (n, info.in_channels, info.image_size, info.image_size), generator=g,
                          dtype=torch.uint8)
        return Split(x, torch.randint(0, info.num_classes, (n,), generator=g))

    return ImageData(info, split(n_train), split(n_test), split(n_test))


def make_run(args: argparse.Namespace, data: ImageData, **settings) -> Run:
    """A harness ``Run`` on ``data`` (one epoch = all of it) with ``settings`` over the flags' ones."""
    catalogue = load_catalogue()
    base = {"dataset": args.dataset, "model": args.model, "eps": args.eps, "batch_size": args.batch_size,
            "device": str(args.device), "fast": {"enabled": args.fast}, "schedule": {"kind": "constant"}}
    config = prepare(RunConfig(**(base | settings)), catalogue)
    store = Store(tempfile.mkdtemp(prefix="energybench-bench-"))
    return Run(config, store, store.create_run(config.model_dump(), config.config_hash()), data=data)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of ``fn()``, with the device's queued work finished before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


@dataclass
class ABResult:
    """Paired timings of two sides, in seconds."""

    a: list[float]
    b: list[float]

    @property
    def ratios(self) -> list[float]:
        return [x / y for x, y in zip(self.a, self.b)]

    @property
    def ratio(self) -> float:
        """Median over pairs of a / b."""
        return statistics.median(self.ratios)


def ab(a: Callable[[], object], b: Callable[[], object], *, repeats: int, warmup: int,
       device: torch.device) -> ABResult:
    """Time ``a`` and ``b`` alternately (A B, B A, ...) ``repeats`` times each after ``warmup`` calls."""
    for _ in range(warmup):
        a()
        b()
    result = ABResult([], [])
    for i in range(repeats):
        if i % 2:
            result.b.append(seconds(b, device))
            result.a.append(seconds(a, device))
        else:
            result.a.append(seconds(a, device))
            result.b.append(seconds(b, device))
    return result


def report(title: str, result: ABResult, a: str, b: str, target: float, args: argparse.Namespace) -> None:
    """Print the setting, both medians and the ratio against its target."""
    verdict = "meets" if result.ratio <= target else "MISSES"
    print(f"{title}\n  device {args.device}, threads {args.threads}, fast path {args.fast}, {args.model} on "
          f"{args.dataset}-shaped random data, batch {args.batch_size}, {args.repeats} A/B pairs")
    print(f"  {a}: median {statistics.median(result.a):.3f}s   {b}: median {statistics.median(result.b):.3f}s")
    print(f"  ratio {a} / {b} (median of pairs): {result.ratio:.3f}  ({verdict} the target <= {target:.2f}); "
          f"pairs ranged {min(result.ratios):.3f} to {max(result.ratios):.3f}")
