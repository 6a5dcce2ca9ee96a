"""Overhead of the CO monitor on a training step: epochs with and without it, A/B alternating.

    python bench/monitor_overhead.py [--dataset fashion-mnist] [--n-train 2560] [--repeats 15] [--device auto]

Trains the same ``Run`` for one epoch at a time, alternating monitor off/on (the order flips every
repeat), and prints the median time per training step of each and their ratio (target: < 1.02).
It also times the monitor's own calls (``observe`` + ``step``) in isolation on the same batches'
values, which is far less noisy on a shared machine than the difference of two epoch times.
On the CPU the clock is the process's CPU time (a busy machine's waiting is not counted); on CUDA
it is wall time with the device synchronised.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from energybench.config import load_catalogue, resolve_config
from energybench.storage.store import Store
from energybench.training.callbacks.co_monitor import COMonitorCallback
from energybench.training.loop import Run
from energybench.training.monitor import COMonitor
from energybench.training.run import prepare


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--trainer", default="fgsm")
    parser.add_argument("--n-train", type=int, default=2560)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    catalogue = load_catalogue()
    config = prepare(resolve_config(catalogue, track="fmnist-co", overrides={
        "dataset": args.dataset, "trainer": args.trainer, "n_train": args.n_train, "device": args.device,
        "val_size": 500, "epochs": 1000}), catalogue)
    with tempfile.TemporaryDirectory() as home:
        store = Store(home)
        run = Run(config, store, store.new_run_id())
        clock = time.perf_counter if run.device.type == "cuda" else time.process_time
        steps = run.batches_per_epoch
        times: dict[str, list[float]] = {"off": [], "on": []}
        unmonitored = [(name, callback) for name, callback in run.callbacks if name != "CO monitor"]
        run.callbacks = unmonitored
        run.train_epoch()  # warm-up
        for repeat in range(args.repeats):
            for mode in ("off", "on") if repeat % 2 == 0 else ("on", "off"):
                run.callbacks = unmonitored + ([("CO monitor", COMonitorCallback(config.monitor, run.device))]
                                               if mode == "on" else [])
                _sync(run.device)
                start = clock()
                run.train_epoch()
                _sync(run.device)
                times[mode].append((clock() - start) / steps)
        off, on = statistics.median(times["off"]), statistics.median(times["on"])
        # The monitor's calls alone, on values shaped like a training batch's.
        values = {"dE": torch.randn(config.batch_size, device=run.device),
                  "dE_joint": torch.randn(config.batch_size, device=run.device)}
        monitor = COMonitor(config.monitor, run.device)
        _sync(run.device)
        start = clock()
        calls = 20 * steps
        for iteration in range(1, calls + 1):
            monitor.observe(values, iteration)
            monitor.step(iteration)
        _sync(run.device)
        alone = (clock() - start) / calls
    print(f"{config.dataset}, {config.trainer}, batch {config.batch_size}, {steps} steps/epoch, device {run.device}, "
          f"{args.repeats} A/B repeats, clock {clock.__name__}")
    print(f"median step time: monitor off {off * 1e3:.2f} ms, on {on * 1e3:.2f} ms")
    print(f"ratio on/off (A/B epochs): {on / off:.4f}")
    print(f"monitor calls alone: {alone * 1e6:.1f} us per step = {alone / off:.2%} of a step "
          f"(ratio {1 + alone / off:.4f})")


if __name__ == "__main__":
    main()
