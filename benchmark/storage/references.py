"""Published robustness results (reference rows) and RobustBench's model-info JSON format.

Reference rows come from registry.toml's ``[[references.robustness]]`` tables and from
RobustBench-style model-info files imported with ``energybench import-reference`` (copied to
``STORE/references/<dataset>/<threat model>/<id>.json``, RobustBench's own layout). They give
measured runs their context: leaderboards show them apart, unranked. ``export_model_info``
writes a run's result in the same format, ready to submit to RobustBench.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from energybench.config import Catalogue, format_eps, parse_eps
from energybench.errors import EnergybenchError
from energybench.files import read_text
from energybench.storage.checkpoint import atomic_write
from energybench.storage.store import Store

#: The fields of a RobustBench model-info JSON (robustbench 1.1.1, ``robustbench.utils.ModelInfo``,
#: corruption fields left out); accuracies and eps are strings there: "83.34", "8/255".
MODEL_INFO_FIELDS = ("link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
                     "architecture", "eps", "clean_acc", "reported", "autoattack_acc", "footnote")
THREAT_MODELS = ("Linf", "L2")


@dataclass(frozen=True)
class Reference:
    """A published result: accuracies as fractions (None when the source gives none)."""

    id: str
    method: str
    architecture: str
    dataset: str
    norm: str
    eps: float
    clean: float | None
    aa: float | None
    source: str
    link: str = ""
    secondary: bool = False  # quoted from a secondary source, not from the paper or RobustBench


def _percent(value: Any, where: str, field: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise EnergybenchError(f"{where}: {field} must be a percentage like 43.21, got {value!r}") from None
    if not 0 <= number <= 100 or math.isnan(number):
        raise EnergybenchError(f"{where}: {field}={number:g} is not a percentage between 0 and 100")
    return number / 100


def _eps(value: Any, where: str) -> float:
    try:
        return parse_eps(value)
    except ValueError as exc:
        raise EnergybenchError(f"{where}: {exc}") from None


def _norm(value: Any, where: str) -> str:
    if value not in THREAT_MODELS:
        raise EnergybenchError(f"{where}: threat model {value!r} is not one of {', '.join(THREAT_MODELS)}")
    return value


def catalogue_references(catalogue: Catalogue) -> list[Reference]:
    """The ``[[references.robustness]]`` entries of registry.toml, checked."""
    refs = []
    for i, entry in enumerate(catalogue.references.get("robustness", [])):
        where = f"{catalogue.path}: references.robustness[{i}]"
        required = ("id", "method", "architecture", "dataset", "eps", "autoattack", "source")
        missing = [k for k in required if k not in entry]
        if missing:
            raise EnergybenchError(f"{where} lacks {', '.join(missing)}")
        refs.append(Reference(id=entry["id"], method=entry["method"], architecture=entry["architecture"],
                              dataset=entry["dataset"], norm=_norm(entry.get("norm", "Linf"), where),
                              eps=_eps(entry["eps"], where), clean=_percent(entry.get("clean"), where, "clean"),
                              aa=_percent(entry["autoattack"], where, "autoattack"), source=entry["source"],
                              link=entry.get("link", ""), secondary=bool(entry.get("secondary", False))))
    return refs


def from_model_info(data: dict[str, Any], *, id: str, norm: str, source: str) -> Reference:
    """A reference row from a RobustBench model-info dict (``model_info/<dataset>/<norm>/<id>.json``)."""
    where = source
    if not isinstance(data, dict):
        raise EnergybenchError(f"{where}: a RobustBench model-info file holds one JSON object")
    missing = [k for k in ("dataset", "eps", "clean_acc", "autoattack_acc") if data.get(k) in (None, "")]
    if missing:
        raise EnergybenchError(f"{where}: RobustBench model-info field(s) {', '.join(missing)} missing")
    unknown = sorted(set(data) - set(MODEL_INFO_FIELDS) - {"corruptions_acc", "corruptions_mce", "external"})
    if unknown:
        raise EnergybenchError(f"{where}: unknown model-info field(s) {', '.join(unknown)} "
                               f"(RobustBench's are: {', '.join(MODEL_INFO_FIELDS)})")
    authors, venue = data.get("authors") or "", data.get("venue") or "unpublished"
    return Reference(id=id, method=data.get("name") or id, architecture=data.get("architecture") or "?",
                     dataset=str(data["dataset"]), norm=_norm(norm, where), eps=_eps(data["eps"], where),
                     clean=_percent(data["clean_acc"], where, "clean_acc"),
                     aa=_percent(data["autoattack_acc"], where, "autoattack_acc"),
                     source=f"{authors + ', ' if authors else ''}{venue} (model info {Path(source).name})",
                     link=data.get("link") or "")


def _reference_dir(store: Store) -> Path:
    return store.home / "references"


def imported_references(store: Store) -> list[Reference]:
    """Model-info files imported into ``store``, oldest file name first."""
    refs = []
    for path in sorted(_reference_dir(store).glob("*/*/*.json")):
        refs.append(from_model_info(_read_json(path), id=path.stem, norm=path.parent.name, source=str(path)))
    return refs


def _read_json(path: Path) -> Any:
    try:
        return json.loads(read_text(path, "model-info file"))
    except json.JSONDecodeError as exc:
        raise EnergybenchError(f"{path} is not JSON: {exc}") from None


def import_model_info(paths: list[str | Path], store: Store, *, norm: str | None = None) -> list[Reference]:
    """Check RobustBench model-info files and copy them into ``store`` as reference rows.

    The threat model is ``norm``, else the name of the file's folder when it is Linf or L2 (as in
    RobustBench's ``model_info/cifar10/Linf/``), else Linf. The reference id is the file name.
    """
    refs = []
    for raw in paths:
        path = Path(raw)
        data = _read_json(path)
        threat = norm or (path.parent.name if path.parent.name in THREAT_MODELS else "Linf")
        refs.append((path, data, from_model_info(data, id=path.stem, norm=threat, source=str(path))))
    for _, data, ref in refs:
        target = _reference_dir(store) / ref.dataset / ref.norm / f"{ref.id}.json"
        atomic_write(target, json.dumps(data, indent=2).encode())
    return [ref for _, _, ref in refs]


def load_references(catalogue: Catalogue, store: Store, *, dataset: str | None = None, eps: float | None = None,
                    norm: str | None = None) -> list[Reference]:
    """Catalogue and imported references matching the filters (None matches all), most robust first."""
    refs = catalogue_references(catalogue) + imported_references(store)
    refs = [r for r in refs if (dataset is None or r.dataset == dataset) and (norm is None or r.norm == norm)
            and (eps is None or abs(r.eps - eps) < 1e-9)]
    return sorted(refs, key=lambda r: -(r.aa if r.aa is not None else -1))


def _pct2(value: float) -> str:
    """RobustBench's accuracy strings: percent rounded to 2 decimals, ``str(round(acc * 100, 2))``."""
    return str(round(value * 100, 2))


def model_info(store: Store, run_id: str, *, checkpoint: str = "last", name: str | None = None,
               authors: str = "", link: str = "", venue: str = "") -> dict[str, Any]:
    """Run ``run_id``'s result as a RobustBench model-info dict (its field names, its string formats)."""
    if checkpoint not in ("best", "last"):
        raise EnergybenchError(f"checkpoint {checkpoint!r} must be 'best' or 'last'")
    record = store.get_run(run_id)
    if record.status != "done":
        raise EnergybenchError(f"run {run_id} is {record.status}, not done: nothing to export")
    results = store.results(run_id).get(checkpoint, {})
    missing = [m for m in ("test_clean_acc", "test_aa_acc") if results.get(m) is None or math.isnan(results[m])]
    if missing:
        raise EnergybenchError(f"run {run_id} ({checkpoint}) has no {' or '.join(missing)}; RobustBench needs "
                               "clean and AutoAttack accuracy (evaluate with --aa-points > 0)")
    protocol = record.config.get("eval", {})
    if protocol.get("aa_version") == "fast":
        raise EnergybenchError(f"run {run_id} ran AutoAttack's fast subset (APGD-CE, APGD-T), not the standard "
                               "version RobustBench reports; evaluate it with the standard version first: "
                               f"energybench eval {run_id} --aa-version standard")
    points = int(results.get("test_aa_points", protocol.get("aa_points", 0)))
    label = record.trainer if record.regularizer == "none" else f"{record.trainer} + {record.regularizer}"
    return {"link": link, "name": name or f"energybench {label}", "authors": authors, "additional_data": False,
            "number_forward_passes": 1, "dataset": record.dataset, "venue": venue, "architecture": record.model,
            "eps": format_eps(record.eps), "clean_acc": _pct2(results["test_clean_acc"]),
            "reported": _pct2(results["test_aa_acc"]), "autoattack_acc": _pct2(results["test_aa_acc"]),
            "footnote": f"Measured by energybench run {run_id} ({checkpoint} checkpoint, {record.norm}): AutoAttack "
                        f"{protocol.get('aa_version', 'standard')} on {points} test points, clean accuracy on "
                        f"{protocol.get('test_points') or 'all'} test points."}


def export_model_info(store: Store, run_id: str, path: str | Path, **options: Any) -> dict[str, Any]:
    """Write ``model_info(store, run_id, **options)`` to ``path`` as JSON; return the dict."""
    info = model_info(store, run_id, **options)
    atomic_write(Path(path), (json.dumps(info, indent=2) + "\n").encode())
    return info
