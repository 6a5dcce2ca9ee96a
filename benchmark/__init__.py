"""energybench: benchmark adversarial training through the lens of energy-based models.

The base classes plugin authors subclass, and the registry in the spirit of timm's
``register_model``/``list_models``/``create_model``::

    from energybench import Regularizer, PluginParams, list_plugins, get_plugin, register_regularizer
"""

from energybench.contracts.attack import Attack
from energybench.contracts.model import Classifier
from energybench.contracts.params import PluginParams
from energybench.contracts.registry import (
    get_plugin,
    list_plugins,
    register_attack,
    register_model,
    register_regularizer,
    register_sampler,
    register_trainer,
)
from energybench.contracts.regularizer import Regularizer
from energybench.contracts.sampler import SampleBatch, Sampler
from energybench.contracts.trainer import Trainer, TrainOutput
from energybench.errors import EnergybenchError, PluginError

__all__ = ["Attack", "Classifier", "EnergybenchError", "PluginError", "PluginParams", "Regularizer", "SampleBatch",
           "Sampler", "TrainOutput", "Trainer", "get_plugin", "list_plugins", "register_attack", "register_model",
           "register_regularizer", "register_sampler", "register_trainer"]
