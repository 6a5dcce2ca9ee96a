"""Running a suite: the tuning stage, the choice of values, then the evaluation cells, skipping what is done."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from energybench.config import Catalogue
from energybench.data.datasets import get_dataset, read_arrays
from energybench.storage.store import Store
from energybench.suites.executors import CellOutcome, Executor
from energybench.suites.spec import Cell, Suite, pending, unique
from energybench.suites.tuning import Selection, choose, chosen_values


@dataclass
class Stage:
    """One stage of a suite as it runs: its name (tuning or evaluation), its cells, and the tuning selections behind
    the evaluation cells' values."""

    name: str
    cells: list[Cell]
    selections: dict[tuple[str, str, float], Selection] = field(default_factory=dict)


def suite_stages(suite: Suite, catalogue: Catalogue, store: Store, *, data_root: str | None = None,
                 device: str | None = None) -> Iterator[Stage]:
    """The suite's stages in the order they run: its tuning cells (if it tunes), then its evaluation cells with the
    values the store's tuning runs choose, read when that stage is reached (so after the tuning cells ran; cells whose
    tuning is missing are ``pending``). A dry run lists them; ``run_suite`` runs each before taking the next."""
    tuning = suite.tuning_cells(catalogue, data_root=data_root, device=device)
    if tuning:
        yield Stage("tuning", unique(tuning))
    selections = choose(store, suite, catalogue, cells=tuning) if tuning else {}
    yield Stage("evaluation", suite.cells(catalogue, chosen=chosen_values(selections), data_root=data_root,
                                          device=device), selections)


@dataclass
class SuiteResult:
    """What a suite run did: the suite, every cell outcome, the tuning selections and the evaluation cells."""

    suite: Suite
    outcomes: list[CellOutcome] = field(default_factory=list)
    selections: dict[tuple[str, str, float], Selection] = field(default_factory=dict)
    cells: list[Cell] = field(default_factory=list)

    @property
    def untuned(self) -> list[Cell]:
        """Evaluation cells left out because their tuning stage did not complete."""
        return [c for c in self.cells if c.pending]

    def unfinished(self) -> str | None:
        """What the run left undone, in words (failed cells, cells another process holds, untuned cells), or None."""
        failed = sum(o.status == "failed" for o in self.outcomes)
        in_use = sum(o.status == "in use" for o in self.outcomes)
        problems = [text for count, text in (
            (failed, f"{failed} cells failed (errors above, kept in the store)"),
            (in_use, f"{in_use} cells are being run by another process"),
            (len(self.untuned), f"{len(self.untuned)} evaluation cells wait for tuning cells that did not complete"),
        ) if count]
        return "; ".join(problems) or None


def check_data(cells: list[Cell], checked: set[tuple[str, str | None]]) -> None:
    """Read each dataset the cells train on once, here, before any cell runs: a wrong data root is one error
    naming it rather than one failed cell per cell (and an image folder is decoded into its cache once, not by
    every worker at the same time). ``checked`` holds the (dataset, data root) pairs read already."""
    for key in sorted({(c.config.dataset, c.config.data_root) for c in cells} - checked, key=str):
        read_arrays(get_dataset(key[0]), key[1])
        checked.add(key)


def run_suite(suite: Suite, catalogue: Catalogue, store: Store, executor: Executor, *,
              data_root: str | None = None, device: str | None = None,
              on_stage: Callable[[str, int, int], None] = lambda stage, cells, todo: None,
              on_done: Callable[[CellOutcome], None] = lambda outcome: None,
              on_epoch: Callable[[Cell, int], None] = lambda cell, epochs: None) -> SuiteResult:
    """Run the cells of each stage (``suite_stages``) not done yet; ``on_stage(stage, cells, to_run)`` announces each
    stage, ``on_done`` hears every cell's end and ``on_epoch`` the progress of Ray cells. Evaluation cells of a
    pair whose tuning did not complete are left out (see ``SuiteResult.untuned``)."""
    result, checked = SuiteResult(suite), set()
    for stage in suite_stages(suite, catalogue, store, data_root=data_root, device=device):
        cells = stage.cells
        if stage.name == "evaluation":
            result.selections, result.cells = stage.selections, stage.cells
            cells = [c for c in cells if not c.pending]
        todo = pending(store, cells)
        if executor.reads_local_files:
            check_data(todo, checked)
        on_stage(stage.name, len(cells), len(todo))
        result.outcomes += executor.run(todo, store, suite=suite.name, on_done=on_done, on_epoch=on_epoch)
    return result
