"""How energybench reads what earlier versions stored: every rename and changed default, by the version that made
it. Nothing in a store or a run folder is rewritten; readers see today's form.

Result keys (``current_key``, applied by ``Store.results`` and ``Store.points`` only). Version 2 (today): every
metric of the final test-set evaluation starts with ``test_``: ``test_<attack>_acc`` for clean, FGSM, PGD and
AutoAttack (``test_aa_acc``, per attack ``test_aa_<attack>_acc``), ``test_aa_points``, the energies
(``test_energy_*``, ``test_dE_*``), the sanity checks (``test_check_*``) and the PGD/AutoAttack disagreement counts
(``test_shared_*``); per-point correctness is keyed like the accuracy without ``_acc`` (``test_pgd``, ``test_aa``).
Per-epoch metrics start with ``train_`` or ``val_``. Version 1: AutoAttack's results were ``aa_acc``,
``aa_points``, ``aa_<attack>_acc`` and per-point ``aa``; the checks ``check_*``; the disagreement counts ``shared_*``.

Run settings (``current_config``, applied to every ``RunRecord`` the store reads). Version 2 (today): DER's
``form`` is always stored. Version 1: DER had no ``form``; its runs were the ablation ``squared``.

Resume state (``current_state``, applied to a ``state.pt`` before a resumed run reads it). Version 3 (today): the
callbacks' states by ``Callback.state_key``. Version 2: by what messages call them (the CO monitor's under
``"CO monitor"``). Version 1: the CO monitor's state under the top-level key ``"monitor"``.

Identity (``UNHASHED_DEFAULTS``): settings added after runs were stored enter ``RunConfig.identity`` (and so the
config hash) only when they differ from the default they had before they existed.
"""

from __future__ import annotations

from typing import Any

#: Settings that enter a run's identity only when they differ from these defaults (added after runs were stored).
UNHASHED_DEFAULTS: dict[str, Any] = {"keep_epochs": False, "early_stop": None, "eval.co_drop": 0.5,
                                     "eval.test": True, "eval.co_drop_min": 0.05, "eval.co_drop_alpha": 0.05,
                                     "model_params": {}, "eval.val_margin": False}


def _test_prefix_v2(key: str) -> str:
    """Version 1 -> 2: AutoAttack's results, the checks and the disagreement counts gain ``test_``."""
    if key == "aa" or key.startswith(("aa_", "check_", "shared_")):
        return f"test_{key}"
    return key


#: Renames by the version that introduced them, applied in order (each leaves today's names unchanged).
RESULT_KEY_MIGRATIONS = {2: _test_prefix_v2}


def current_key(key: str) -> str:
    """Today's name of a result or per-point key that a store of any earlier version holds."""
    for version in sorted(RESULT_KEY_MIGRATIONS):
        key = RESULT_KEY_MIGRATIONS[version](key)
    return key


def _der_form_v2(config: dict[str, Any]) -> dict[str, Any]:
    """Version 1 -> 2: a DER run stored before the published form existed was the ``squared`` ablation."""
    params = config.get("regularizer_params") or {}
    if config.get("regularizer") != "der" or "form" in params:
        return config
    return config | {"regularizer_params": {"form": "squared"} | params}


#: Run-settings changes by the version that introduced them, applied in order.
CONFIG_MIGRATIONS = {2: _der_form_v2}


def current_config(config: dict[str, Any]) -> dict[str, Any]:
    """Today's form of the settings a run of any earlier version stored."""
    for version in sorted(CONFIG_MIGRATIONS):
        config = CONFIG_MIGRATIONS[version](config)
    return config


def _monitor_callback_v2(state: dict[str, Any]) -> dict[str, Any]:
    """Version 1 -> 2: the CO monitor's state moves from ``"monitor"`` into the callbacks' states."""
    if "monitor" not in state:
        return state
    rest = {k: v for k, v in state.items() if k != "monitor"}
    return rest | {"callbacks": state.get("callbacks", {}) | {"CO monitor": state["monitor"]}}


def _state_keys_v3(state: dict[str, Any]) -> dict[str, Any]:
    """Version 2 -> 3: the callbacks' states are keyed by ``state_key`` (the built-in ones' display names go)."""
    renamed = {"CO monitor": "co-monitor"}
    callbacks = {renamed.get(k, k): v for k, v in state.get("callbacks", {}).items()}
    return state | {"callbacks": callbacks}


#: Resume-state changes by the version that introduced them, applied in order.
STATE_MIGRATIONS = {2: _monitor_callback_v2, 3: _state_keys_v3}


def current_state(state: dict[str, Any]) -> dict[str, Any]:
    """Today's form of a resume state (``state.pt``) that a run of any earlier version saved."""
    for version in sorted(STATE_MIGRATIONS):
        state = STATE_MIGRATIONS[version](state)
    return state
