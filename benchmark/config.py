"""Run configuration: the catalogue in registry.toml, tracks, and the validated `RunConfig`.

A run's settings are resolved in this order, later ones winning: the ``RunConfig`` defaults,
the track from registry.toml, a ``--config`` TOML file, then explicit CLI flags. Plugin
hyper-parameters are resolved the same way on top of the plugin's own ``Params`` defaults and
the ``[defaults.<kind>.<name>]`` tables of registry.toml.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from energybench.errors import EnergybenchError, unknown_name
from energybench.files import read_text
from energybench.storage.migrations import UNHASHED_DEFAULTS

if TYPE_CHECKING:
    import torch

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def parse_eps(value: Any) -> float:
    """A perturbation budget from a number or a string like ``"8/255"`` or ``"0.031"``."""
    if isinstance(value, bool):
        raise ValueError(f"eps must be a number, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    if not re.fullmatch(r"[-+]?[0-9.eE+-]+(/[0-9.]+)?", text):
        raise ValueError(f"eps {text!r} is not a number or a fraction like 8/255")
    try:
        return float(Fraction(text)) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"eps {text!r} is not a number or a fraction like 8/255") from None


def eps_value(value: float | str | None) -> float | None:
    """``parse_eps`` for an argument: None stays None, a bad value is one ``EnergybenchError`` line."""
    try:
        return None if value is None else parse_eps(value)
    except ValueError as exc:
        raise EnergybenchError(str(exc)) from None


def format_eps(eps: float) -> str:
    """``8/255`` when eps is a whole number of 1/255 steps, else the number itself."""
    k = eps * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 and round(k) > 0 else f"{eps:g}"


#: A seed: at most what torch's generators and SQLite's integers both hold.
Seed = Annotated[int, Field(ge=0, le=2**63 - 1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class EvalProtocol(_Strict):
    """How a run is evaluated: per epoch on a fixed validation subset, and finally on the test set."""

    val_points: int = Field(1000, ge=1, description="fixed validation subset evaluated every epoch")
    val_pgd_steps: int = Field(10, ge=1, description="PGD steps of the per-epoch evaluation")
    test_points: int | None = Field(None, ge=1, description="test points for clean/PGD (None = all)")
    pgd_steps: int = Field(20, ge=1, description="PGD steps of the final evaluation")
    pgd_restarts: int = Field(1, ge=1, description="PGD restarts of the final evaluation")
    aa_points: int = Field(1000, ge=0, description="test points attacked by AutoAttack (0 = skip)")
    aa_version: Literal["standard", "plus", "rand", "fast"] = Field(
        "standard", description="AutoAttack's version (pyautoattack): standard, plus or rand; fast: the standard "
        "version's APGD-CE and APGD-T only (no FAB-T, no Square), an upper bound of standard AutoAttack's accuracy")
    batch_size: int = Field(500, ge=1, description="batch size for evaluation")
    co_gap: float = Field(0.3, ge=0, le=1, description="CO: FGSM minus PGD validation accuracy at least this")
    co_ratio: float = Field(0.5, gt=0, le=1, description="CO: PGD accuracy below this fraction of FGSM accuracy")
    co_drop: float = Field(0.5, gt=0, le=1, description="CO: or PGD accuracy below this fraction of its best "
                           "earlier value (catches a collapse when FGSM accuracy itself is low)...")
    co_drop_min: float = Field(0.05, ge=0, le=1, description="...by at least this much, with FGSM at least this "
                               "much above PGD (a model that never was robust does not collapse; 0: no floor)...")
    co_drop_alpha: float = Field(0.05, gt=0, le=1, description="...and significantly: one-sided Fisher exact test of "
                                 "the fall on the validation points, Bonferroni-corrected for the earlier epochs, "
                                 "p at most this (1: no test)")
    val_margin: bool = Field(False, description="also attack the validation subset with PGD on the CW margin loss "
                             "and record the point-wise worst case of both PGDs (val_worst_acc): a selection measure "
                             "that saturated cross-entropy (gradient masking) cannot inflate as easily")
    test: bool = Field(True, description="evaluate the best and last checkpoints on the test set after training "
                       "(suite tuning runs skip it: they are ranked on validation metrics only)")


class Schedule(_Strict):
    """Learning-rate schedule over the run, stepped every batch."""

    kind: Literal["constant", "cyclic", "step"] = "cyclic"
    peak_at: float = Field(0.4, gt=0, lt=1, description="cyclic: fraction of the run at which LR peaks")
    milestones: list[float] = Field(default_factory=lambda: [0.5, 0.75],
                                    description="step: fractions of the run where LR is multiplied by gamma")
    gamma: float = Field(0.1, gt=0, le=1)

    def factor(self, progress: float) -> float:
        """LR multiplier at ``progress`` in [0, 1] of the run."""
        if self.kind == "constant":
            return 1.0
        if self.kind == "cyclic":
            if progress <= self.peak_at:
                return progress / self.peak_at
            return max(0.0, (1 - progress) / (1 - self.peak_at))
        return self.gamma ** sum(progress >= m for m in self.milestones)


class MonitorConfig(_Strict):
    """The catastrophic-overfitting early warning on the training dE (benchmark/training/monitor.py, docs/energy.md).

    The defaults were tuned with bench/co_monitor_eval.py on Fashion-MNIST FGSM/RS-FGSM/N-FGSM runs.
    """

    enabled: bool = True
    action: Literal["warn", "stop", "rollback"] = Field(
        "warn", description="on alarm: warn only; stop training (then evaluate); or roll back to the last "
                            "healthy epoch and continue with fallback_trainer")
    signal: Literal["dE", "dE_joint"] = Field("dE", description="batch mean of the marginal or the joint dE")
    direction: Literal["up", "both"] = Field("up", description="alarm on a rising dE only (CO raises it), or both ways")
    check_every: int = Field(16, ge=1, description="training batches per check (one host read per check)")
    halflife: float = Field(16.0, gt=0, description="half-life of the baseline's moving mean and variance, in checks")
    threshold: float = Field(3.0, gt=0, description="alarm when the z-score of a check exceeds this...")
    patience: int = Field(1, ge=1, description="...for this many consecutive checks")
    warmup: int = Field(2, ge=0, description="checks that only build the baseline")
    min_std: float = Field(0.02, gt=0, description="floor of the baseline's standard deviation")
    fallback_trainer: str = Field("n-fgsm", description="rollback: the trainer used after rolling back")


class FastPath(_Strict):
    """Speed settings of the run's device (benchmark/training/acceleration.py, docs/performance.md).

    With ``enabled="auto"`` they apply on CUDA and not on CPU; ``"on"``/``"off"`` force them.
    They change speed and floating-point rounding, not the experiment, so the config hash ignores them.
    """

    enabled: Literal["auto", "on", "off"] = Field("auto", description="auto: on when the run's device is CUDA")
    amp: Literal["bf16", "off"] = Field("bf16", description="autocast dtype of the model's forward passes")
    amp_test: bool = Field(False, description="autocast the final test evaluation too (default: it runs in float32)")
    channels_last: bool = Field(True, description="channels_last memory format for the model and its inputs")
    cudnn_benchmark: bool = Field(True, description="let cuDNN pick the fastest convolution algorithms")
    fused_optimizer: bool = Field(True, description="fused SGD kernels where the device has them")
    compile: bool = Field(False, description="torch.compile the model (slow start, faster steps)")


class RunConfig(_Strict):
    """Everything that determines a run's result (plus where to find data and which device)."""

    track: str | None = None
    name: str | None = Field(None, min_length=1, description="what leaderboards call an evaluated model (`energybench "
                             "eval --name`); a label, not part of the config hash")
    dataset: str = "fashion-mnist"
    model: str = "small-cnn"
    model_params: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the model plugin, "
                                         "e.g. {width = 16} for a narrow preact-resnet18")
    trainer: str = "fgsm"
    trainer_params: dict[str, Any] = Field(default_factory=dict)
    regularizer: str = "none"
    regularizer_params: dict[str, Any] = Field(default_factory=dict)
    eps: float = 0.3
    norm: Literal["Linf", "L2"] = "Linf"
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Schedule = Field(default_factory=Schedule)
    augment: bool = False
    n_train: int | None = Field(None, ge=1)
    val_size: int = Field(5000, ge=1)
    seed: Seed = 0
    eval: EvalProtocol = Field(default_factory=EvalProtocol)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    fast: FastPath = Field(default_factory=FastPath)
    device: str = "auto"
    threads: int | None = Field(None, ge=1, description="torch intra-op CPU threads while the run trains and "
                                "evaluates (None: torch's default); small models run faster on one")
    data_root: str | None = None
    plugin_timeout: float | None = Field(None, gt=0, description="seconds one trainer step or regularizer "
                                         "penalty may take before its run fails (None = no limit; Unix only)")
    keep_epochs: bool = Field(False, description="also keep every epoch's weights as epoch-K.pt in the run folder "
                              "(for checkpoint-selection studies)")
    early_stop: int | None = Field(None, ge=1, description="stop training once this many epochs passed without a "
                                   "better validation PGD accuracy (early stopping; None = train every epoch)")
    callbacks: list[str] = Field(default_factory=list, description="extra training-loop callbacks by name, e.g. "
                                 "tensorboard (they observe training, so they do not change the config hash)")

    @field_validator("eps", mode="before")
    @classmethod
    def _eps(cls, value: Any) -> float:
        return parse_eps(value)

    @model_validator(mode="after")
    def _eps_range(self) -> RunConfig:
        limit = 1.0 if self.norm == "Linf" else 100.0
        if not 0 < self.eps < limit:
            raise ValueError(f"eps={self.eps:g} is outside (0, {limit:g}) for the {self.norm} norm "
                             "(inputs live in [0, 1]; e.g. 8/255 or 0.3)")
        return self

    def identity(self, *, seed: bool = True) -> dict[str, Any]:
        """The settings that determine the result: everything but the track name, an evaluated model's name, device,
        CPU threads, fast path, data path, plugin timeout, callbacks (loggers), and a monitor that only warns. Two
        runs with the same identity are the same experiment; without ``seed`` (``seed=False``), seeds of one.

        Settings added after runs were first stored count only when they differ from their default
        (``energybench.storage.migrations.UNHASHED_DEFAULTS``), so every earlier run keeps its identity."""
        ignored: dict[str, Any] = {k: True for k in IDENTITY_IGNORES}
        if not seed:
            ignored["seed"] = True
        if not self.monitor.enabled or self.monitor.action == "warn":
            ignored["monitor"] = True
        for path, default in UNHASHED_DEFAULTS.items():
            *parents, leaf = path.split(".")
            owner = self
            for parent in parents:
                owner = getattr(owner, parent)
            if getattr(owner, leaf) == default:
                target = ignored
                for parent in parents:
                    target = target.setdefault(parent, {})
                target[leaf] = True
        return self.model_dump(exclude=ignored)

    def config_hash(self) -> str:
        """A short hash of ``identity()``: what the store files the run under."""
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]


#: Settings that never change a run's result (``RunConfig.identity`` leaves them out).
IDENTITY_IGNORES = ("track", "name", "device", "threads", "fast", "data_root", "plugin_timeout", "callbacks")


def select_device(name: str) -> torch.device:
    """The torch device of a ``device`` setting: auto (CUDA when available, else CPU), cpu, cuda or cuda:N."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise EnergybenchError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EnergybenchError(f"device {name!r} requested but CUDA is not available here (use auto or cpu)")
    return device


@contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op CPU threads set to ``n`` inside the block (None: left as they are), restored after.

    Small models on a few cores run several times faster on one thread: thread start-up and synchronisation
    cost more than the work they share (measured in README, Tracks)."""
    import torch

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Track(_Strict):
    """A named benchmark setting from registry.toml: a description plus ``RunConfig`` fields."""

    description: str
    settings: dict[str, Any]


class Catalogue:
    """registry.toml, parsed: tracks, the default track, suites, plugin defaults and reference rows."""

    def __init__(self, path: Path, text: str | None = None):
        self.path = path
        try:
            data = tomllib.loads(read_text(path, "catalogue") if text is None else text)
        except tomllib.TOMLDecodeError as exc:
            raise EnergybenchError(f"cannot read catalogue {path}: {exc}") from None
        self.default_track: str = data.get("default_track", "")
        self.tracks: dict[str, Track] = {}
        for name, table in data.get("tracks", {}).items():
            if not isinstance(table, dict) or not isinstance(table.get("description"), str):
                raise EnergybenchError(f"{path}: track {name!r} needs a table with a 'description' string")
            settings = {k: v for k, v in table.items() if k != "description"}
            try:
                RunConfig(**settings)
            except ValidationError as exc:
                raise EnergybenchError(f"{path}: track {name!r} is malformed: {readable(exc)}") from None
            self.tracks[name] = Track(description=table["description"], settings=settings)
        if self.default_track and self.default_track not in self.tracks:
            raise EnergybenchError(f"{path}: default_track {self.default_track!r} is not a track")
        self.plugin_defaults: dict[str, dict[str, dict[str, Any]]] = data.get("defaults", {})
        self.suites: dict[str, dict[str, Any]] = data.get("suites", {})
        self.references: dict[str, list[dict[str, Any]]] = data.get("references", {})
        #: Per dataset, how its domain feature extractor is trained differently (energybench.generation).
        self.feature_extractors: dict[str, dict[str, Any]] = data.get("feature_extractors", {})

    def track(self, name: str) -> Track:
        if name not in self.tracks:
            raise unknown_name("track", name, list(self.tracks))
        return self.tracks[name]

    def defaults_for(self, kind: str, name: str) -> dict[str, Any]:
        """The catalogue's default hyper-parameters for plugin ``name`` of ``kind``."""
        return dict(self.plugin_defaults.get(kind, {}).get(name, {}))


def default_catalogue_path() -> Path:
    """registry.toml: $ENERGYBENCH_REGISTRY, inside the installed package, or beside it in a checkout."""
    if os.environ.get("ENERGYBENCH_REGISTRY"):
        return Path(os.environ["ENERGYBENCH_REGISTRY"])
    here = Path(__file__).resolve().parent
    for candidate in (here / "registry.toml", here.parent / "registry.toml"):
        if candidate.is_file():
            return candidate
    raise EnergybenchError("registry.toml not found beside the benchmark package; set ENERGYBENCH_REGISTRY")


def load_catalogue(path: str | Path | None = None) -> Catalogue:
    """registry.toml at ``path`` (default: ``default_catalogue_path``), parsed and its tracks checked once per content
    in a process (a command that reads it twice validates its tracks once)."""
    target = Path(path) if path else default_catalogue_path()
    return _parsed_catalogue(target, read_text(target, "catalogue"))


@functools.lru_cache(maxsize=8)
def _parsed_catalogue(path: Path, text: str) -> Catalogue:
    return Catalogue(path, text)


def readable(exc: ValidationError) -> str:
    """pydantic's errors as one line: ``field: message (got value)``; ..."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "config"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown setting {where!r}")
        elif err["type"] == "value_error":
            parts.append(msg)
        else:
            parts.append(f"{where}: {msg} (got {err.get('input')!r})")
    return "; ".join(parts)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@dataclass
class RunRequest:
    """What a training run asks for (``energybench.train``, ``energybench run``): its settings come from the track
    (default: the catalogue's default track), then the TOML file ``config``, then the ``trainer`` and ``regularizer``
    with their hyper-parameters, the extra training-loop ``callbacks`` and ``settings`` (any ``RunConfig`` field)."""

    trainer: str | None = None
    regularizer: str | None = None
    track: str | None = None
    config: str | Path | None = None
    trainer_params: dict[str, Any] | None = None
    regularizer_params: dict[str, Any] | None = None
    callbacks: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def resolve(self, catalogue: Catalogue) -> RunConfig:
        """The ``RunConfig`` this request asks for (``resolve_config``)."""
        overrides = self.settings | {"trainer": self.trainer, "regularizer": self.regularizer,
                                     "trainer_params": self.trainer_params,
                                     "regularizer_params": self.regularizer_params, "callbacks": self.callbacks or None}
        return resolve_config(catalogue, track=self.track, config_file=self.config, overrides=overrides)


def resolve_config(catalogue: Catalogue, *, track: str | None = None, config_file: str | Path | None = None,
                   overrides: dict[str, Any] | None = None) -> RunConfig:
    """Build a ``RunConfig`` from the track (or the default one), a TOML file and CLI overrides."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    settings: dict[str, Any] = {}
    if track is None and not {"dataset", "model"} & overrides.keys() and catalogue.default_track:
        track = catalogue.default_track
    if track is not None:
        settings = _merge(settings, catalogue.track(track).settings)
        settings["track"] = track
    if config_file is not None:
        try:
            settings = _merge(settings, tomllib.loads(read_text(config_file, "config file")))
        except tomllib.TOMLDecodeError as exc:
            raise EnergybenchError(f"cannot read config file {config_file}: {exc}") from None
    settings = _merge(settings, overrides)
    try:
        return RunConfig(**settings)
    except ValidationError as exc:
        raise EnergybenchError(f"invalid configuration: {readable(exc)}") from None
