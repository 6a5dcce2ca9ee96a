"""The point counts a run asks of its dataset, fitted to the splits that exist.

``n_train``, ``eval.val_points``, ``eval.test_points`` and ``eval.aa_points`` larger than their
split use the whole split. The stored config must say what ran, and hash like the identical run
that asked for no more than there is, so such a count is replaced by the split's size (or unset
where unset means "all": ``n_train``, ``test_points``), with a warning.
"""

from __future__ import annotations

from energybench.config import RunConfig
from energybench.data.datasets import ImageData


def fit_counts(config: RunConfig, data: ImageData, *, validation: bool = True) -> tuple[RunConfig, list[str]]:
    """``config`` with every count larger than its split of ``data`` fitted to it, and a warning per change;
    ``validation=False`` leaves the validation count alone (an evaluation without a validation split)."""
    name, protocol = config.dataset, config.eval
    update: dict[str, object] = {}
    fitted: dict[str, object] = {}
    warnings = []
    if config.n_train is not None and config.n_train > len(data.train):
        update["n_train"] = None
        warnings.append(f"n_train={config.n_train} is more than the {len(data.train)} training points of {name!r} "
                        f"(after its {len(data.val)}-point validation split): training on all of them, stored as "
                        "n_train unset")
    counts = [("test_points", protocol.test_points, len(data.test), None, "test"),
              ("aa_points", protocol.aa_points, len(data.test), len(data.test), "test")]
    if validation:
        counts.append(("val_points", protocol.val_points, len(data.val), len(data.val), "validation"))
    for key, asked, size, stored, split in counts:
        if asked is not None and asked > size:
            fitted[key] = stored
            what = f"{key} unset" if stored is None else f"{key}={stored}"
            warnings.append(f"eval.{key}={asked} is more than the {size} {split} points of {name!r}: using all of "
                            f"them, stored as {what}")
    if fitted:
        update["eval"] = protocol.model_copy(update=fitted)
    return config.model_copy(update=update), warnings
