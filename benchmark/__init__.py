"""energybench's core: the plugin registry, base classes, harness, evaluation, store and reports.

The registry API, in the spirit of timm's ``register_model``/``list_models``/``create_model``::

    from energybench import list_plugins, get_plugin, register_regularizer
"""

from energybench.contracts.registry import (
    get_plugin,
    list_plugins,
    register_attack,
    register_model,
    register_regularizer,
    register_sampler,
    register_trainer,
)

__all__ = ["get_plugin", "list_plugins", "register_attack", "register_model", "register_regularizer",
           "register_sampler", "register_trainer"]
