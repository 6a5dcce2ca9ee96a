"""RobustBench 1.1.1 behind a lazy compatibility layer: its model zoo, loaded from local weights.

robustbench 1.1.1 imports ``autoattack`` (the GitHub package, never released on PyPI) and
``pkg_resources``. This module registers the PyPI release ``pyautoattack`` under the module name
``autoattack`` before the first ``import robustbench``, and loads zoo models with
``robustbench.utils.load_model`` from RobustBench's ``model_dir`` layout
(``MODEL_DIR/<dataset>/<threat model>/<name>.pt``). Weights are downloaded (from Google Drive, or
through timm for the few models RobustBench registers there) only when downloads are allowed;
offline, a one-line error says where to fetch them and where to put them.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
import warnings
from pathlib import Path
from types import ModuleType

from torch import nn

from energybench.data.datasets import offline
from energybench.errors import EnergybenchError, unknown_name

#: Prefix that marks a RobustBench model-zoo name on the command line: ``robustbench:Wong2020Fast``.
ZOO_PREFIX = "robustbench:"
#: Datasets and norm-ball threat models that both RobustBench's zoo and energybench evaluate.
ZOO_DATASETS = ("cifar10", "cifar100")
ZOO_THREAT_MODELS = ("Linf", "L2")


def _alias_autoattack() -> None:
    """Make ``import autoattack`` and ``import autoattack.<sub>`` resolve to pyautoattack's modules."""
    if "autoattack" in sys.modules:
        return
    try:
        package = importlib.import_module("pyautoattack")
    except ImportError:
        raise EnergybenchError("robustbench needs pyautoattack==0.2.0: pip install pyautoattack==0.2.0") from None
    sys.modules["autoattack"] = package
    for sub in pkgutil.iter_modules(package.__path__):
        if sub.name.startswith("utils_tf"):  # TensorFlow adapters: never imported by robustbench
            continue
        sys.modules[f"autoattack.{sub.name}"] = importlib.import_module(f"pyautoattack.{sub.name}")


def import_robustbench() -> ModuleType:
    """``import robustbench`` (1.1.1) with pyautoattack standing in for ``autoattack``."""
    if "robustbench.utils" in sys.modules:
        return sys.modules["robustbench"]
    if importlib.util.find_spec("pkg_resources") is None:  # robustbench.loaders imports it
        raise EnergybenchError("robustbench 1.1.1 needs pkg_resources: pip install 'setuptools<81'")
    _alias_autoattack()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module("robustbench")
    except ImportError as exc:
        raise EnergybenchError(f"cannot import robustbench ({exc}); install it with "
                               "pip install 'energybench[robustbench]' (robustbench==1.1.1, setuptools<81)") from None


def zoo_names(dataset: str, threat_model: str) -> list[str]:
    """The model names of RobustBench's zoo for ``dataset`` and ``threat_model``."""
    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    return list(model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat_model)])


def _check_names(name: str, dataset: str, threat_model: str) -> None:
    if dataset not in ZOO_DATASETS:
        raise EnergybenchError(f"RobustBench models need --dataset {' or '.join(ZOO_DATASETS)}, got {dataset!r}")
    if threat_model not in ZOO_THREAT_MODELS:
        raise EnergybenchError(f"RobustBench threat model {threat_model!r} is not one of "
                               f"{', '.join(ZOO_THREAT_MODELS)}")
    names = zoo_names(dataset, threat_model)
    if name not in names:
        raise unknown_name(f"RobustBench {dataset}/{threat_model} model", name, names)


def _gdrive_ids(name: str, dataset: str, threat_model: str) -> list[str] | str:
    """The Google Drive id of ``name``'s weights, or a list of ids for an ensemble (one per member)."""
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    return model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat_model)][name]["gdrive_id"]


def weight_files(name: str, *, dataset: str, threat_model: str, model_dir: str | Path) -> list[Path]:
    """Where ``robustbench.utils.load_model`` looks for ``name``'s weights (one file per ensemble member)."""
    path = Path(model_dir) / dataset / threat_model / f"{name}.pt"
    ids = _gdrive_ids(name, dataset, threat_model)
    return [Path(f"{path}_m{i}.pt") for i in range(len(ids))] if isinstance(ids, list) else [path]


def _timm_name(name: str, dataset: str, threat_model: str) -> str | None:
    """The timm model RobustBench loads instead of a Google Drive file, if there is one."""
    import timm

    candidate = f"{name.lower().replace('-', '_')}_{dataset}_{threat_model.lower()}"
    return candidate if timm.is_model(candidate) else None


def load_zoo_model(name: str, *, dataset: str = "cifar10", threat_model: str = "Linf",
                   model_dir: str | Path) -> nn.Module:
    """RobustBench's ``name`` in eval mode, from ``model_dir`` (downloaded there only when online).

    The model maps inputs in [0, 1] to logits: RobustBench models normalise inside, as energybench's do.
    """
    rb = import_robustbench()
    _check_names(name, dataset, threat_model)
    timm_name = _timm_name(name, dataset, threat_model)
    if timm_name is not None:
        if offline():
            raise EnergybenchError(f"RobustBench model {name!r} is loaded through timm ({timm_name!r}), which fetches "
                                   "its weights at load time into the torch hub cache ($TORCH_HOME); downloads are "
                                   "disabled (ENERGYBENCH_OFFLINE): unset it to fetch them once, or to use the cache")
        where = f"the URL of timm model {timm_name!r} (into the torch hub cache, $TORCH_HOME)"
        missing = []
    else:
        files = weight_files(name, dataset=dataset, threat_model=threat_model, model_dir=model_dir)
        missing = [f for f in files if not f.is_file()]
        ids = _gdrive_ids(name, dataset, threat_model)
        where = "Google Drive (" + ", ".join(f"https://drive.google.com/uc?id={i}"
                                             for i in (ids if isinstance(ids, list) else [ids])) + ")"
    fetch_hint = (f"fetch the weights of RobustBench model {name!r} first from {where}"
                  + (f" into {', '.join(str(f) for f in missing)}" if missing else "")
                  + " (energybench eval downloads them itself when ENERGYBENCH_OFFLINE is unset and the "
                    "network is reachable)")
    if missing and offline():
        raise EnergybenchError(f"weights not found and downloads are disabled (ENERGYBENCH_OFFLINE): {fetch_hint}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = rb.utils.load_model(name, model_dir=str(model_dir), dataset=dataset, threat_model=threat_model)
    except EnergybenchError:
        raise
    except Exception as exc:
        for path in missing:  # a failed download may leave a partial file behind
            path.unlink(missing_ok=True)
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise EnergybenchError(f"cannot load RobustBench model {name!r} ({type(exc).__name__}: {first}); "
                               f"{fetch_hint}") from None
    return model.eval()
