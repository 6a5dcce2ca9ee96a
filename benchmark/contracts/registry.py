"""The plugin registry: entry-point discovery, lazy loading and in-process registration.

Plugins of every kind are found through entry-point groups (``energybench.attacks``,
``energybench.trainers``, ``energybench.regularizers``, ``energybench.samplers``,
``energybench.models``, ``energybench.callbacks``, ``energybench.datasets``). Built-in plugins
register through the same groups in energybench's own pyproject.toml. Names are listed from
package metadata without importing plugin code; a plugin is imported the first time it is used.
A plugin that fails to import, is not a subclass of its kind's base class, or clashes with a name
already taken is reported in ``problems`` (with the distribution it came from) and skipped, so the
rest keeps working.

Setting ``ENERGYBENCH_DISABLE_PLUGIN_AUTOLOAD=1`` loads only energybench's built-in plugins.
"""

from __future__ import annotations

import fnmatch
import importlib
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field

from energybench.contracts.params import validated
from energybench.errors import EnergybenchError, PluginError, unknown_name

if TYPE_CHECKING:
    from torch import nn

    from energybench.contracts.attack import Attack
    from energybench.contracts.callback import Callback
    from energybench.contracts.dataset import Dataset
    from energybench.contracts.regularizer import Regularizer
    from energybench.contracts.sampler import Sampler
    from energybench.contracts.trainer import Trainer

BUILTIN_DISTRIBUTION = "energybench"
RUNTIME_SOURCE = "<runtime>"


@dataclass(frozen=True)
class Kind:
    """A kind of plugin: its entry-point group and the base class its plugins must subclass."""

    name: str
    group: str
    base: str  # "module:attr", imported only when a plugin of this kind is loaded

    def base_class(self) -> type:
        module, attr = self.base.split(":")
        return getattr(importlib.import_module(module), attr)


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("attack", "energybench.attacks", "energybench.contracts.attack:Attack"),
        Kind("trainer", "energybench.trainers", "energybench.contracts.trainer:Trainer"),
        Kind("regularizer", "energybench.regularizers", "energybench.contracts.regularizer:Regularizer"),
        Kind("sampler", "energybench.samplers", "energybench.contracts.sampler:Sampler"),
        Kind("model", "energybench.models", "torch.nn:Module"),
        Kind("callback", "energybench.callbacks", "energybench.contracts.callback:Callback"),
        Kind("dataset", "energybench.datasets", "energybench.contracts.dataset:Dataset"),
    )
}


@dataclass
class PluginEntry:
    """One registered plugin: where it lives and which distribution provides it."""

    kind: str
    name: str
    target: str  # "module:attr" for entry points, a repr for runtime registrations
    source: str  # "distribution version" or "<runtime>"
    obj: Any = field(default=None, repr=False)

    @property
    def builtin(self) -> bool:
        return self.source.split(" ")[0] == BUILTIN_DISTRIBUTION


class Registry:
    """All plugins of all kinds, discovered once from installed entry points."""

    def __init__(self, *, builtin_only: bool | None = None):
        if builtin_only is None:
            builtin_only = os.environ.get("ENERGYBENCH_DISABLE_PLUGIN_AUTOLOAD", "") not in ("", "0")
        self.builtin_only = builtin_only
        self.problems: list[str] = []
        self._entries: dict[str, dict[str, PluginEntry]] = {kind: {} for kind in KINDS}
        for kind in KINDS.values():
            self._discover(kind)

    def _discover(self, kind: Kind) -> None:
        found: dict[tuple[str, str], PluginEntry] = {}
        for ep in entry_points(group=kind.group):
            dist = getattr(ep, "dist", None)
            source = f"{dist.name} {dist.version}" if dist is not None else "unknown"
            if self.builtin_only and not source.startswith(BUILTIN_DISTRIBUTION + " "):
                continue
            found.setdefault((ep.name, ep.value), PluginEntry(kind.name, ep.name, ep.value, source))
        # Built-ins first, then by distribution name: the first holder of a name keeps it.
        for entry in sorted(found.values(), key=lambda e: (not e.builtin, e.source, e.target)):
            self._add(entry)

    def _add(self, entry: PluginEntry) -> None:
        taken = self._entries[entry.kind].get(entry.name)
        if taken is not None:
            self.problems.append(
                f"{entry.kind} {entry.name!r} from {entry.source} ({entry.target}) clashes with the one "
                f"from {taken.source} ({taken.target}); skipped"
            )
            return
        self._entries[entry.kind][entry.name] = entry

    def names(self, kind: str) -> list[str]:
        """Registered names of ``kind``, sorted, without importing any plugin."""
        return sorted(self._entries[kind])

    def entry(self, kind: str, name: str) -> PluginEntry:
        """The entry for ``name``; an unknown name raises with a did-you-mean suggestion."""
        try:
            return self._entries[kind][name]
        except KeyError:
            raise unknown_name(kind, name, self.names(kind)) from None

    def load(self, kind: str, name: str) -> Any:
        """Import (once) and validate the plugin ``name`` of ``kind``, returning its class."""
        entry = self.entry(kind, name)
        if entry.obj is None:
            entry.obj = self._import(entry)
        return entry.obj

    def _import(self, entry: PluginEntry) -> Any:
        module, _, attr = entry.target.partition(":")
        try:
            obj = importlib.import_module(module)
            for part in attr.split(".") if attr else []:
                obj = getattr(obj, part)
        except Exception as exc:  # a broken third-party plugin must not take the CLI down
            raise PluginError(f"{entry.kind} {entry.name!r} from {entry.source} failed to import "
                              f"({entry.target}): {type(exc).__name__}: {exc}") from None
        self._check(entry, obj)
        return obj

    @staticmethod
    def _check(entry: PluginEntry, obj: Any) -> None:
        base = KINDS[entry.kind].base_class()
        if not (isinstance(obj, type) and issubclass(obj, base)):
            raise PluginError(f"{entry.kind} {entry.name!r} from {entry.source} ({entry.target}) "
                              f"is not a subclass of {base.__module__}.{base.__qualname__}")
        if "name" in vars(base) and not vars(obj).get("name"):
            # so messages name the plugin as registered (a subclass of a loaded plugin must not inherit its name)
            obj.name = entry.name

    def load_all(self, kind: str) -> list[tuple[PluginEntry, Any]]:
        """Import every plugin of ``kind``; the ones that fail are moved to ``problems``."""
        loaded = []
        for name in self.names(kind):
            try:
                loaded.append((self.entry(kind, name), self.load(kind, name)))
            except PluginError as exc:
                self.problems.append(f"{exc}; skipped")
                del self._entries[kind][name]
        return loaded

    def register(self, kind: str, name: str, obj: Any, *, source: str = RUNTIME_SOURCE) -> Any:
        """Register ``obj`` under ``name`` in this process (no entry point needed)."""
        if kind not in KINDS:
            raise unknown_name("plugin kind", kind, list(KINDS))
        entry = PluginEntry(kind, name, f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', obj)}",
                            source)
        if name in self._entries[kind]:
            raise PluginError(f"{kind} {name!r} is already registered by {self._entries[kind][name].source}")
        self._check(entry, obj)
        entry.obj = obj
        self._entries[kind][name] = entry
        return obj


#: The registries in use, innermost last: the process-wide one first (discovered on first use), then any that
#: ``use_registry`` opened.
_ACTIVE: list[Registry] = []


def get_registry() -> Registry:
    """The registry in use: the innermost ``use_registry`` block's, else the process-wide one."""
    if not _ACTIVE:
        _ACTIVE.append(Registry())
    return _ACTIVE[-1]


@contextmanager
def use_registry(registry: Registry | None = None) -> Iterator[Registry]:
    """Inside the block, plugins are looked up and registered in ``registry`` (default: a freshly discovered one),
    so registrations made there (a test's plugin) are gone after it."""
    get_registry()  # the process-wide one stays underneath
    scoped = registry if registry is not None else Registry()
    _ACTIVE.append(scoped)
    try:
        yield scoped
    finally:
        _ACTIVE.remove(scoped)


def _registrar(kind: str) -> Callable[[str], Callable[[Any], Any]]:
    def register(name: str) -> Callable[[Any], Any]:
        def decorate(obj: Any) -> Any:
            return get_registry().register(kind, name, obj)

        return decorate

    register.__name__ = f"register_{kind}"
    register.__doc__ = f"Decorator registering a {kind} class under ``name`` in this process."
    return register


register_attack = _registrar("attack")
register_trainer = _registrar("trainer")
register_regularizer = _registrar("regularizer")
register_sampler = _registrar("sampler")
register_model = _registrar("model")
register_callback = _registrar("callback")
register_dataset = _registrar("dataset")


def list_plugins(kind: str, pattern: str | None = None) -> list[str]:
    """Names of the registered plugins of ``kind``, optionally those matching a shell ``pattern`` such as
    ``"*fgsm"`` (no plugin code is imported)."""
    if kind not in KINDS:
        raise unknown_name("plugin kind", kind, list(KINDS))
    names = get_registry().names(kind)
    return fnmatch.filter(names, pattern) if pattern else names


def get_plugin(kind: str, name: str) -> Any:
    """The plugin class registered as ``name`` of ``kind``."""
    return get_registry().load(kind, name)


# ----- building plugins by name: one way for every kind (timm's create_model) ----------------------

def _build(kind: str, name: str, *args: Any, **params: Any) -> Any:
    """An instance of plugin ``name`` of ``kind``; an exception in its constructor becomes a PluginError
    naming it."""
    from energybench.contracts.guard import call_plugin

    return call_plugin(kind, name, get_plugin(kind, name), *args, **params)


def create_attack(name: str, model: nn.Module, *, eps: float, norm: str = "Linf", seed: int | None = None,
                  **params: Any) -> Attack:
    """The attack ``name`` on ``model`` in the ``norm`` ball of radius ``eps`` with hyper-parameters ``params``."""
    return _build("attack", name, model, eps=eps, norm=norm, seed=seed, **params)


@validated
def create_trainer(name: str, *, eps: float, norm: str = "Linf", **params: Any) -> Trainer:
    """The trainer ``name`` for budget ``eps`` of ``norm`` with hyper-parameters ``params``."""
    return _build("trainer", name, eps=eps, norm=norm, **params)


@validated
def create_regularizer(name: str, *, trainer_eps: float | None = None, trainer_norm: str = "Linf",
                       trainer_single_step: bool | None = None, **params: Any) -> Regularizer:
    """The regularizer ``name`` with hyper-parameters ``params``; it learns the trainer's budget (``eps`` and
    ``norm`` attributes) for regularizers that follow it (GradAlign's noise radius), and whether the trainer is
    single-step (``trainer_single_step``: DER's abnormal-example mask with ``aae="auto"``)."""
    regularizer = _build("regularizer", name, **params)
    regularizer.eps, regularizer.norm = trainer_eps, trainer_norm
    regularizer.trainer_single_step = trainer_single_step
    return regularizer


@validated
def create_sampler(name: str, **params: Any) -> Sampler:
    """The sampler ``name`` with hyper-parameters ``params``."""
    return _build("sampler", name, **params)


Count = Annotated[int, Field(ge=1)]


@validated
def create_model(name: str, *, dataset: str | None = None, num_classes: Count | None = None,
                 in_channels: Count | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[Annotated[float, Field(gt=0)]] | None = None, **params: Any) -> nn.Module:
    """An untrained model ``name`` sized for ``dataset`` (its classes, channels and normalisation), or for
    the given ``num_classes``/``in_channels``/``mean``/``std`` (one value per channel); ``params`` are the
    model's own keyword arguments (``width=16``)."""
    if dataset is not None:
        from energybench.data.datasets import get_dataset

        info = get_dataset(dataset)
        num_classes, in_channels = num_classes or info.num_classes, in_channels or info.in_channels
        mean, std = mean or info.mean, std or info.std
    if num_classes is None or in_channels is None:
        raise EnergybenchError(f"model {name!r} needs a dataset or num_classes and in_channels")
    mean = mean if mean is not None else (0.5,) * in_channels
    std = std if std is not None else (0.5,) * in_channels
    if len(mean) != in_channels or len(std) != in_channels:
        raise EnergybenchError(f"model {name!r}: mean and std need one value per channel ({in_channels}), "
                               f"got {len(mean)} and {len(std)}")
    unknown = set(params) - model_params(get_plugin("model", name))
    if unknown:
        given = ", ".join(f"{k}={params[k]!r}" for k in sorted(unknown))
        accepted = ", ".join(sorted(model_params(get_plugin("model", name)))) or "none"
        raise EnergybenchError(f"model {name!r} does not take {given} (its parameters: {accepted})")
    return _build("model", name, num_classes=num_classes, in_channels=in_channels, mean=tuple(mean), std=tuple(std),
                  **params)


def model_params(cls: type) -> set[str]:
    """The keyword arguments a model plugin takes besides ``num_classes``, ``in_channels``, ``mean`` and ``std``."""
    import inspect

    signature = inspect.signature(cls.__init__).parameters.values()
    return {p.name for p in signature if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {
        "self", "num_classes", "in_channels", "mean", "std"}


@validated
def create_callback(name: str, **params: Any) -> Callback:
    """The training-loop callback ``name`` with hyper-parameters ``params``."""
    return _build("callback", name, **params)


def create_dataset(name: str) -> Dataset:
    """The dataset plugin ``name``, or the image-folder dataset at the path ``name`` (a folder or archive)."""
    from energybench.data.datasets import get_dataset

    return get_dataset(name)
