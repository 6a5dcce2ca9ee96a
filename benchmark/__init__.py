"""energybench: benchmark adversarial training through the lens of energy-based models.

The Python API, the same code the ``energybench`` command runs::

    import energybench
    energybench.list_plugins("regularizer")                 # ['aaer', 'der', 'gradalign', 'none']
    run = energybench.train("fgsm", "der", track="digits-tiny")
    run.results["last"]["test_pgd_acc"]
    energybench.evaluate(model, dataset="cifar10", eps="8/255", n=1000)
    energybench.leaderboard(dataset="digits")             # plain rows (list of dicts)

Plugins: the base classes to subclass (``Attack``, ``Trainer``, ``Regularizer``, ``Sampler``,
``Callback``, ``Classifier`` for models, ``PluginParams`` for hyper-parameters), the registry in the
spirit of timm (``register_*``, ``list_plugins``, ``create_*``), discovered through entry points.
"""

from energybench.api import StoredRun, evaluate, leaderboard, load, resume, sample, train
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

__all__ = ["Arrays", "Attack", "Batch", "Callback", "Classifier", "Dataset", "EnergybenchError", "ImageFolderDataset",
           "PluginError", "PluginParams", "Regularizer", "SampleBatch", "Sampler", "StoredRun", "TrainOutput",
           "Trainer", "create_attack", "create_callback", "create_dataset", "create_model", "create_regularizer",
           "create_sampler", "create_trainer", "evaluate", "get_plugin", "leaderboard", "list_plugins", "load",
           "register_attack", "register_callback", "register_dataset", "register_model", "register_regularizer",
           "register_sampler", "register_trainer", "resume", "sample", "train"]
