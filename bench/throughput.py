"""Training throughput: images/s and seconds per epoch vs batch size, model and trainer.

Each cell trains one warm-up epoch, then ``--repeats`` timed epochs over the same ``--n-train``
random images (on the device), and reports the median. Trainers are written NAME, NAME-STEPS
(a PGD-style trainer's ``steps``) or NAME+REGULARIZER, e.g. fgsm, fgsm+der, pgd-10.

    python bench/throughput.py                            # CPU-sized
    python bench/throughput.py --device cuda --models preact-resnet18 --trainers fgsm,fgsm+der,pgd-10 \\
        --batch-sizes 128,256,512 --n-train 50000 --repeats 2
"""

from __future__ import annotations

import statistics

import _timing


def trainer_settings(spec: str) -> dict:
    """``pgd-10+der`` -> trainer pgd with steps 10 and regularizer der."""
    name, _, regularizer = spec.partition("+")
    trainer, _, steps = name.rpartition("-")
    if not (trainer and steps.isdigit()):
        trainer, steps = name, ""
    settings = {"trainer": trainer} | ({"regularizer": regularizer} if regularizer else {})
    return settings | ({"trainer_params": {"steps": int(steps)}} if steps else {})


def main() -> None:
    p = _timing.parser(__doc__.splitlines()[0])
    p.add_argument("--models", help="comma-separated model plugins (default: --model)")
    p.add_argument("--trainers", default="fgsm", help="comma-separated, e.g. fgsm,fgsm+der,pgd-10 (default fgsm)")
    p.add_argument("--batch-sizes", default="32,128", help="comma-separated (default 32,128)")
    p.set_defaults(repeats=3)
    args = _timing.parse(p)
    data = _timing.random_data(args.dataset, args.n_train)
    print(f"Throughput on {args.device} ({args.threads} threads, fast path {args.fast}), {args.n_train} "
          f"{args.dataset}-shaped random images per epoch, median of {args.repeats} epochs")
    print(f"{'model':<16} {'trainer':<12} {'batch':>6} {'images/s':>10} {'s/epoch':>9}")
    for model in (args.models or args.model).split(","):
        for spec in args.trainers.split(","):
            for batch_size in (int(b) for b in args.batch_sizes.split(",")):
                run = _timing.make_run(args, data, model=model, batch_size=batch_size, **trainer_settings(spec))
                for _ in range(args.warmup):
                    run.train_epoch()
                t = statistics.median(_timing.seconds(run.train_epoch, args.device) for _ in range(args.repeats))
                images = run.batches_per_epoch * batch_size
                print(f"{model:<16} {spec:<12} {batch_size:>6} {images / t:>10.1f} {t:>9.2f}", flush=True)


if __name__ == "__main__":
    main()
