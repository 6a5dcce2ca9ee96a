"""The pydantic base model for the hyper-parameters a plugin declares."""

from __future__ import annotations

import functools
import inspect
import math
import types
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, validate_call

F = TypeVar("F", bound=Callable[..., Any])


class PluginParams(BaseModel):
    """Hyper-parameters of a plugin: typed, validated, unknown keys refused.

    A plugin subclasses this as its nested ``Params`` class; the CLI validates
    ``--trainer-opt KEY=VALUE`` (and friends) against it and ``energybench plugins``
    lists its fields. Numbers must be finite (inf and nan are refused).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)


def budget(eps: Any, owner: str) -> float:
    """A plugin's perturbation budget ``eps`` as a float; anything but a finite positive number raises one line
    naming ``owner``."""
    from energybench.errors import EnergybenchError

    try:
        value = float(eps)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise EnergybenchError(f"{owner}: eps={eps!r} must be a finite positive number")
    return value


def parse_params(params_cls: type[PluginParams], values: dict, owner: str) -> PluginParams:
    """Validate ``values`` against ``params_cls``; on failure raise one readable line naming ``owner``."""
    from pydantic import ValidationError

    from energybench.errors import EnergybenchError

    try:
        return params_cls(**values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(root)"
            if err["type"] == "extra_forbidden":
                accepted = ", ".join(params_cls.model_fields) or "none"
                problems.append(f"unknown hyper-parameter {where!r} (accepted: {accepted})")
            elif err["type"] == "value_error" and not err["loc"]:  # a check across fields: its message says it all
                problems.append(err["msg"].removeprefix("Value error, "))
            else:
                problems.append(f"{where}={err.get('input')!r}: {err['msg']}")
        raise EnergybenchError(f"invalid hyper-parameters for {owner}: " + "; ".join(problems)) from None


def validated(fn: F) -> F:
    """``fn`` with its arguments checked against its annotations (pydantic's ``validate_call``; numbers must
    be finite): a wrong argument raises one EnergybenchError line naming it, as a bad CLI flag does."""
    from energybench.errors import EnergybenchError

    # a copy without the return annotation, which is not checked and may name a type imported for type checkers only
    bare = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    bare.__kwdefaults__ = fn.__kwdefaults__
    bare.__annotations__ = {k: v for k, v in fn.__annotations__.items() if k != "return"}
    checked = validate_call(config=ConfigDict(arbitrary_types_allowed=True, allow_inf_nan=False))(bare)
    names = list(inspect.signature(fn).parameters)

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return checked(*args, **kwargs)
        except ValidationError as exc:
            if exc.title != fn.__name__:  # raised inside fn, not by its arguments
                raise
            by_argument: dict[str, list[dict[str, Any]]] = {}
            for err in exc.errors():
                first = err["loc"][0] if err["loc"] else "arguments"
                by_argument.setdefault(names[first] if isinstance(first, int) else str(first), []).append(err)
            problems = []
            for name, errors in by_argument.items():
                if len(errors) > 1:  # one per member of a union
                    expected = fn.__annotations__.get(name, "valid")
                    problems.append(f"{name} must be {expected}, got {errors[0]['input']!r}")
                else:
                    where = ".".join([name, *(str(p) for p in errors[0]["loc"][1:])])
                    got = "" if errors[0]["type"].startswith("missing") else f" (got {errors[0]['input']!r})"
                    problems.append(f"{where}: {errors[0]['msg']}{got}")
            raise EnergybenchError(f"invalid argument to {fn.__name__}(): {'; '.join(problems)}") from None

    return call  # type: ignore[return-value]
