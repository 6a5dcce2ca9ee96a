"""Image-folder datasets: the first load (PIL decode of every image) against later loads from the cache.

Loads ``cifar10-jpeg`` (60,000 JPEG images) from its archive (or, with ``--dataset path``, an unpacked
folder as an unnamed image-folder dataset) into a fresh cache folder: once decoding, then ``--repeats``
times from the cached tensor file, each a whole ``load_dataset`` call (cache key, read, stratified
order, validation split) in a new process, as a run makes it (the interpreter's start and imports not
counted). Target: a cached load <= 2 s on 2 cores.

    python bench/dataset_cache.py --source ~/data/cifar10-jpeg.tar.gz
    python bench/dataset_cache.py --source /tmp/cifar10-jpeg          # the unpacked folder
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

TARGET_SECONDS = 2.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", required=True, help="cifar10-jpeg.tar.gz or the unpacked cifar10-jpeg folder")
    p.add_argument("--dataset", default="cifar10-jpeg", help="dataset plugin, or 'path' to read --source as an "
                   "unnamed image folder")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as home:
        os.environ["ENERGYBENCH_HOME"] = home  # a fresh, empty cache
        name, root = (args.source, None) if args.dataset == "path" else (args.dataset, args.source)
        snippet = (f"import time, torch; torch.set_num_threads({args.threads}); "
                   "from energybench.data.datasets import load_dataset; start = time.perf_counter(); "
                   f"data = load_dataset({name!r}, data_root={root!r}, val_size=1000); "
                   "assert len(data.train) + len(data.val) + len(data.test) == 60000; "
                   "print(time.perf_counter() - start)")

        def load() -> float:
            out = subprocess.run([sys.executable, "-c", snippet], check=True, capture_output=True, text=True)
            return float(out.stdout.split()[-1])

        first = load()
        cached = [load() for _ in range(args.repeats)]
    median = statistics.median(cached)
    print(f"{args.dataset} from {args.source}, {args.threads} threads")
    print(f"  first load (decode 60,000 images, write the cache): {first:.1f} s")
    print(f"  cached load: median {median:.2f} s over {args.repeats} (min {min(cached):.2f}, max {max(cached):.2f})")
    print(f"  first / cached: {first / median:.1f}x; target cached <= {TARGET_SECONDS:g} s: "
          f"{'met' if median <= TARGET_SECONDS else 'NOT met'}")


if __name__ == "__main__":
    main()
