"""Running a suite: the tuning stage, the choice of values, then the evaluation cells, skipping what is done."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from energybench.config import Catalogue
from energybench.storage.store import Store
from energybench.suites.executors import CellOutcome, Executor
from energybench.suites.spec import Cell, Suite, pending, unique
from energybench.suites.tuning import Selection, choose, chosen_values


@dataclass
class SuiteResult:
    """What a suite run did: every cell outcome, the tuning selections and the evaluation cells."""

    outcomes: list[CellOutcome] = field(default_factory=list)
    selections: dict[tuple[str, str, float], Selection] = field(default_factory=dict)
    cells: list[Cell] = field(default_factory=list)

    @property
    def untuned(self) -> list[Cell]:
        """Evaluation cells left out because their tuning stage did not complete."""
        return [c for c in self.cells if c.pending]


def run_suite(suite: Suite, catalogue: Catalogue, store: Store, executor: Executor, *,
              data_root: str | None = None, device: str | None = None,
              on_stage: Callable[[str, int, int], None] = lambda stage, cells, todo: None,
              on_done: Callable[[CellOutcome], None] = lambda outcome: None) -> SuiteResult:
    """Run the tuning cells not done yet, choose the tuned values, then run the evaluation cells not done
    yet; ``on_stage(stage, cells, to_run)`` announces each stage and ``on_done`` hears every cell's end.
    Evaluation cells of a pair whose tuning did not complete are left out (see ``SuiteResult.untuned``)."""
    result = SuiteResult()
    tuning = unique(suite.tuning_cells(catalogue, data_root=data_root, device=device))
    if tuning:
        todo = pending(store, tuning)
        on_stage("tuning", len(tuning), len(todo))
        result.outcomes += executor.run(todo, store, suite=suite.name, on_done=on_done)
        result.selections = choose(store, suite, catalogue, cells=suite.tuning_cells(catalogue))
    result.cells = suite.cells(catalogue, chosen=chosen_values(result.selections), data_root=data_root,
                               device=device)
    ready = [c for c in result.cells if not c.pending]
    todo = pending(store, ready)
    on_stage("evaluation", len(ready), len(todo))
    result.outcomes += executor.run(todo, store, suite=suite.name, on_done=on_done)
    return result
