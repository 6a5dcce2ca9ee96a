"""energybench: benchmark adversarial training through the lens of energy-based models.

The Python API, the same code the ``energybench`` command runs (every command is a function)::

    import energybench
    energybench.list_plugins("regularizer")                 # ['aaer', 'der', 'gradalign', 'none']
    run = energybench.train("fgsm", "der", track="digits-tiny")
    run.results["last"]["test_pgd_acc"]
    x, y = energybench.load_data("digits", split="test")    # what evaluations read: floats in [0, 1]
    energybench.evaluate(model, dataset="cifar10", eps="8/255", test_points=1000, name="my-model")
    energybench.leaderboard(dataset="digits")             # plain rows (list of dicts)
    energybench.compare(run_a, run_b); energybench.export(run_id, "MyMethod.json"); energybench.report([run_id])
    energybench.suite_plan("tiny"); energybench.run_suite("tiny"); energybench.tracks(); energybench.get_run(id)

Plugins: the base classes to subclass (``Attack``, ``Trainer``, ``Regularizer``, ``Sampler``,
``Callback``, ``Classifier`` for models, ``PluginParams`` for hyper-parameters), the registry in the
spirit of timm (``register_*``, ``list_plugins``, ``create_*``), discovered through entry points.
"""

if __name__ != "energybench":  # the checkout's folder imported by its own name: a second copy of every module
    raise ImportError(f"import energybench, not {__name__}: the benchmark/ folder is the energybench package (pip "
                      "install -e . makes it importable); a second copy of its modules breaks the plugin registry")

from importlib.metadata import PackageNotFoundError, version

from energybench.api import (
    RunRequest,
    StoredRun,
    compare,
    comparison,
    describe_plugins,
    energy_histograms,
    energy_trace,
    evaluate,
    export,
    generative_leaderboard,
    get_run,
    import_reference,
    leaderboard,
    load,
    load_data,
    rankings,
    repair_store,
    report,
    resume,
    run,
    run_suite,
    sample,
    select_epochs,
    suite_plan,
    tracks,
    train,
)
from energybench.contracts.attack import Attack
from energybench.contracts.callback import Batch, Callback
from energybench.contracts.dataset import Arrays, Dataset
from energybench.contracts.model import Classifier
from energybench.contracts.params import PluginParams
from energybench.contracts.registry import (
    create_attack,
    create_callback,
    create_dataset,
    create_model,
    create_regularizer,
    create_sampler,
    create_trainer,
    get_plugin,
    list_plugins,
    register_attack,
    register_callback,
    register_dataset,
    register_model,
    register_regularizer,
    register_sampler,
    register_trainer,
)
from energybench.contracts.regularizer import Regularizer
from energybench.contracts.sampler import SampleBatch, Sampler
from energybench.contracts.trainer import Trainer, TrainOutput
from energybench.data.image_folder import ImageFolderDataset
from energybench.errors import EnergybenchError, PluginError
from energybench.training.progress import Reporter, RichReporter

try:
    __version__ = version("energybench")
except PackageNotFoundError:  # pragma: no cover - a checkout used without installing it
    __version__ = "unknown"

__all__ = ["Arrays", "Attack", "Batch", "Callback", "Classifier", "Dataset", "EnergybenchError", "ImageFolderDataset",
           "PluginError", "PluginParams", "Regularizer", "Reporter", "RichReporter", "RunRequest", "SampleBatch",
           "Sampler", "StoredRun", "TrainOutput", "Trainer", "__version__", "compare", "comparison", "create_attack",
           "create_callback", "create_dataset", "create_model", "create_regularizer", "create_sampler",
           "create_trainer", "describe_plugins", "energy_histograms", "energy_trace", "evaluate", "export",
           "generative_leaderboard", "get_plugin", "get_run", "import_reference", "leaderboard", "list_plugins", "load",
           "load_data", "register_attack", "register_callback", "register_dataset", "register_model",
           "register_regularizer", "register_sampler", "register_trainer", "rankings", "repair_store", "report",
           "resume", "run", "run_suite", "sample", "select_epochs", "suite_plan", "tracks", "train"]
