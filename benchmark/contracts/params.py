"""The pydantic base model for the hyper-parameters a plugin declares."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class PluginParams(BaseModel):
    """Hyper-parameters of a plugin: typed, validated, unknown keys refused.

    A plugin subclasses this as its nested ``Params`` class; the CLI validates
    ``--trainer-opt KEY=VALUE`` (and friends) against it and ``energybench plugins``
    lists its fields.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


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
