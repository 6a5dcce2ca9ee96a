"""Result keys across energybench versions: a store keeps the names its results were written under, and
every reader sees today's (``current_key``, applied by ``Store.results`` and ``Store.points`` only).

Version 2 (today): every metric of the final test-set evaluation starts with ``test_``:
``test_<attack>_acc`` for clean, FGSM, PGD and AutoAttack (``test_aa_acc``, per attack ``test_aa_<attack>_acc``),
``test_aa_points``, the energies (``test_energy_*``, ``test_dE_*``), the sanity checks (``test_check_*``) and the
PGD/AutoAttack disagreement counts (``test_shared_*``); per-point correctness is keyed like the accuracy without
``_acc`` (``test_pgd``, ``test_aa``). Per-epoch metrics start with ``train_`` or ``val_``.

Version 1 (stores written before it): AutoAttack's results were ``aa_acc``, ``aa_points``, ``aa_<attack>_acc`` and
per-point ``aa``; the checks ``check_*``; the disagreement counts ``shared_*``.
"""

from __future__ import annotations

#: The version of the names below; stores written by version 1 are read through ``MIGRATIONS[2]``.
RESULT_KEYS_VERSION = 2


def _test_prefix_v2(key: str) -> str:
    """Version 1 -> 2: AutoAttack's results, the checks and the disagreement counts gain ``test_``."""
    if key == "aa" or key.startswith(("aa_", "check_", "shared_")):
        return f"test_{key}"
    return key


#: Renames by the version that introduced them, applied in order (each leaves today's names unchanged).
MIGRATIONS = {2: _test_prefix_v2}


def current_key(key: str) -> str:
    """Today's name of a result or per-point key that a store of any earlier version holds."""
    for version in sorted(MIGRATIONS):
        key = MIGRATIONS[version](key)
    return key
