"""Leaderboard exports (table, markdown, csv, json, html), reference rows, seed groups, RobustBench JSON."""

from __future__ import annotations

import csv
import io
import json
import statistics
from html.parser import HTMLParser

import pytest
import scipy.stats
from datafiles import run_cli

from energybench.config import RunConfig
from energybench.storage.references import MODEL_INFO_FIELDS
from energybench.storage.store import Store

EPS = 8 / 255


def add_run(store: Store, *, aa: float, pgd: float, clean: float, seed: int = 0, trainer: str = "fgsm",
            dataset: str = "cifar10", eps: float = EPS, suite: str | None = None, track: str | None = None,
            wall_time: float = 10.0, norm: str = "Linf", status: str = "done", model: str = "preact-resnet18",
            name: str | None = None) -> str:
    """A run with these (last-checkpoint) results, completed unless ``status`` says otherwise; best is 1 point
    better everywhere."""
    config = RunConfig(dataset=dataset, model=model, trainer=trainer, eps=eps, seed=seed, track=track, norm=norm,
                       name=name)
    run_id = store.create_run(config.model_dump(), config.config_hash(), suite=suite)
    last = {"test_clean_acc": clean, "test_pgd_acc": pgd, "test_aa_acc": aa, "test_aa_points": 1000.0, "co": 0.0,
            "train_dE_mean": -0.0123456789}
    store.add_results(run_id, "last", last)
    store.add_results(run_id, "best", {k: v + 0.01 if k.endswith("_acc") else v for k, v in last.items()})
    store.set_status(run_id, status, wall_time=wall_time)
    return run_id


@pytest.fixture
def home(tmp_path):
    store = Store(tmp_path / "store")
    add_run(store, aa=0.4123456789, pgd=0.4987654321, clean=0.8011111111, trainer="fgsm", wall_time=30.0)
    add_run(store, aa=0.3012345678, pgd=0.3198765432, clean=0.8522222222, trainer="rs-fgsm", wall_time=20.0)
    add_run(store, aa=0.4555555555, pgd=0.5011111111, clean=0.7833333333, trainer="pgd", wall_time=90.0)
    return tmp_path / "store"


class Tables(HTMLParser):
    """The rows of every <table>: lists of cell texts, with the table's class."""

    def __init__(self):
        super().__init__()
        self.tables: list[tuple[str, list[list[str]]]] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append((dict(attrs).get("class", ""), []))
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr":
            self.tables[-1][1].append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def markdown_tables(text: str) -> list[list[list[str]]]:
    tables, current = [], None
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if current is None:
                current = []
                tables.append(current)
            if not set("".join(cells)) <= set("-: "):
                current.append(cells)
        else:
            current = None
    return tables


def export(capsys, home, fmt, *extra):
    code, out, err = run_cli(capsys, "leaderboard", "--format", fmt, "--store", home, *extra)
    assert code == 0, err
    return out


def test_every_format_carries_the_same_numbers(capsys, home, tmp_path):
    store = Store(home)
    data = json.loads(export(capsys, home, "json"))
    measured = data["measured"]
    assert [r["trainer"] for r in measured] == ["pgd", "fgsm", "rs-fgsm"]  # by AutoAttack accuracy (last)
    # AutoAttack on 1000 points ranks; 45.6% vs 41.2% is not significant at 5% (Fisher's exact test: no
    # per-point data stored), 41.2% vs 30.1% is
    assert [r["rank"] for r in measured] == [1, 1, 3] and measured[1]["p_above"] > 0.05 > measured[2]["p_above"]
    assert {r["ranked_by"] for r in measured} == {"test_aa_acc"}
    assert measured[1]["test_above"] == "Fisher exact (unpaired)"
    for row in measured:  # the fields are the result keys: of the last checkpoint, and best_ + key of the best
        results = store.results(row["id"])
        for key in ("test_aa_acc", "test_pgd_acc", "test_clean_acc", "train_dE_mean"):
            assert row[key] == results["last"][key], key
        assert row["best_test_aa_acc"] == results["best"]["test_aa_acc"] and row["eps"] == EPS
    order = [r["id"] for r in measured]

    out = tmp_path / "board.csv"  # -o writes the same text to a file
    code, _, err = run_cli(capsys, "leaderboard", "--format", "csv", "-o", out, "--store", home)
    assert code == 0 and "written to" in err
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    csv_measured = [r for r in rows if r["kind"] == "measured"]
    assert [r["id"] for r in csv_measured] == order and [r["rank"] for r in csv_measured] == ["1", "1", "3"]
    for row, expected in zip(csv_measured, measured):
        for field in ("test_aa_acc", "best_test_aa_acc", "test_pgd_acc", "best_test_pgd_acc", "test_clean_acc",
                      "best_test_clean_acc", "train_dE_mean", "eps", "wall_time", "test_aa_acc_low", "test_aa_acc_high",
                      "test_pgd_acc_low", "p_above"):
            assert (float(row[field]) if row[field] else None) == expected[field], field
        assert row["test_aa_acc_n"] == "1000" and row["test_pgd_acc_n"] == "10000"  # the whole CIFAR-10 test split

    def shown(run_id: str) -> dict[str, str]:
        """best/last accuracy ± the larger distance to a bound of either's Wilson interval (scipy's)."""
        results = store.results(run_id)
        cells = {}
        for name, metric, n in (("clean b/l", "test_clean_acc", 10000), ("PGD b/l", "test_pgd_acc", 10000),
                                ("AA b/l", "test_aa_acc", 1000)):
            margin = 0.0
            for checkpoint in ("best", "last"):
                value = results[checkpoint][metric]
                ci = scipy.stats.binomtest(round(value * n), n).proportion_ci(method="wilson")
                margin = max(margin, value - ci.low, ci.high - value)
            cells[name] = f"{100 * results['best'][metric]:.1f}/{100 * results['last'][metric]:.1f} ±{100 * margin:.1f}"
        return cells

    md = markdown_tables(export(capsys, home, "markdown"))[0]
    parser = Tables()
    parser.feed(export(capsys, home, "html"))
    html_rows = next(rows for cls, rows in parser.tables if "measured" in cls)
    for table in (md, html_rows):
        header, body = table[0], [row for row in table[1:] if row[0].strip("*") != "-"]  # the measured rows
        assert [r[header.index("run")] for r in body] == order and [r[0] for r in body] == ["1", "1", "3"]
        for row in body:
            for name, text in shown(row[header.index("run")]).items():
                assert row[header.index(name)] == text, name
    text = export(capsys, home, "table")
    for run_id in order:
        line = next(line for line in text.splitlines() if run_id in line)
        assert all(cell in line for cell in shown(run_id).values())


def test_reference_rows_are_shown_apart_and_never_ranked(capsys, home):
    data = json.loads(export(capsys, home, "json", "--sort", "aa"))
    refs = {r["id"]: r for r in data["references"]}
    # docs/references.md: RobustBench's rows and WEAT's (secondary source), CIFAR-10 Linf 8/255 only
    assert set(refs) == {"Wong2020Fast", "Andriushchenko2020Understanding", "Madry2018Towards",
                         "Zhang2019Theoretically", "Rice2020Overfitting", "WEAT-cifar10", "WEAT-TRADES-cifar10"}
    wong = refs["Wong2020Fast"]
    assert (wong["test_clean_acc"], wong["test_aa_acc"]) == pytest.approx((0.8334, 0.4321))
    assert refs["Rice2020Overfitting"]["test_aa_acc"] == pytest.approx(0.5342) and refs["WEAT-cifar10"]["secondary"]
    assert all(r["rank"] is None for r in refs.values())
    # every reference is more robust than every measured run, and still none takes a rank
    assert [r["rank"] for r in data["measured"]] == [1, 1, 3] and not set(refs) & {r["id"] for r in data["measured"]}

    rows = list(csv.DictReader(io.StringIO(export(capsys, home, "csv"))))
    assert [r["kind"] for r in rows] == ["measured"] * 3 + ["reference"] * 7
    assert {r["rank"] for r in rows if r["kind"] == "reference"} == {"-"}

    # in every human format, the references sit in the setting's table, in italics, below its ranked rows
    assert {r["setting"] for r in data["references"]} == {r["setting"] for r in data["measured"]}
    (table,) = markdown_tables(export(capsys, home, "markdown"))
    assert [r[0] for r in table[1:]] == ["1", "1", "3"] + ["*-*"] * 7
    assert table[4][1] == "*Rice2020Overfitting*" and table[4][2] == "*PGD-AT + early stopping*"
    parser = Tables()
    html = export(capsys, home, "html")
    parser.feed(html)
    ((cls, rows),) = parser.tables
    assert cls == "leaderboard measured" and [r[0] for r in rows[1:]] == ["1", "1", "3"] + ["-"] * 7
    assert html.count('<tr class="reference"') == 7
    text = export(capsys, home, "table")
    lines = text.splitlines()
    assert lines.index(next(line for line in lines if "Wong2020Fast" in line)) > max(
        i for i, line in enumerate(lines) if any(r["id"] in line for r in data["measured"]))
    assert "│ Wong2020Fast " in text and "43.21" in text and "italic rows, rank -: published results" in " ".join(
        text.split())

    assert json.loads(export(capsys, home, "json", "--no-references"))["references"] == []


def test_every_architecture_and_the_references_of_a_setting_meet_in_one_table(capsys, tmp_path):
    """Rows rank per dataset, threat model and eps, the architecture a column (RobustBench's way): a trained run, a
    run of another architecture and a named model of one's own share one ranking, and the setting's published
    references sit below them; ``--per-arch`` ranks each architecture apart (each table keeps the references).
    cifar10-jpeg is another dataset: its runs never meet cifar10's rows or references."""
    store = Store(tmp_path)
    ids = {"fgsm": add_run(store, aa=0.40, pgd=0.45, clean=0.80),
           "pgd": add_run(store, aa=0.42, pgd=0.47, clean=0.85, trainer="pgd", model="wrn-28-10"),
           "my-net": add_run(store, aa=0.41, pgd=0.46, clean=0.82, trainer="external", model="Sequential",
                             name="my-net"),
           "jpeg": add_run(store, aa=0.5, pgd=0.55, clean=0.9, dataset="cifar10-jpeg")}
    data = json.loads(export(capsys, tmp_path, "json"))
    cifar, jpeg = "cifar10, Linf eps 8/255", "cifar10-jpeg, Linf eps 8/255"
    assert [s["setting"] for s in data["settings"]] == [cifar, jpeg]
    rows = {r["id"]: r for r in data["measured"]}
    assert [(r["method"], r["model"], r["setting"]) for r in data["measured"] if r["setting"] == cifar] == [
        ("pgd", "wrn-28-10", cifar), ("my-net", "Sequential", cifar), ("fgsm", "preact-resnet18", cifar)]
    assert [rows[ids[k]]["rank"] for k in ("pgd", "my-net", "fgsm")] == [1, 1, 1]  # one ranking, tested together
    assert rows[ids["my-net"]]["name"] == "my-net" and rows[ids["fgsm"]]["name"] is None
    assert len(data["references"]) == 7 and {r["setting"] for r in data["references"]} == {cifar}
    text = export(capsys, tmp_path, "table")
    cifar_table, jpeg_table = text.split(f"Leaderboard: {jpeg}")
    assert all(ids[k] in cifar_table for k in ("fgsm", "pgd", "my-net")) and "Wong2020Fast" in cifar_table
    assert ids["jpeg"] in jpeg_table and "Wong2020Fast" not in jpeg_table and "RobustBench" not in jpeg_table
    per_arch = json.loads(export(capsys, tmp_path, "json", "--per-arch"))
    assert [s["setting"] for s in per_arch["settings"]] == [
        "cifar10, Sequential, Linf eps 8/255", "cifar10, preact-resnet18, Linf eps 8/255",
        "cifar10, wrn-28-10, Linf eps 8/255", "cifar10-jpeg, preact-resnet18, Linf eps 8/255"]
    assert all(r["rank"] == 1 for r in per_arch["measured"]) and len(per_arch["references"]) == 3 * 7


def test_references_follow_the_filters(capsys, tmp_path):
    store = Store(tmp_path)
    add_run(store, aa=0.4, pgd=0.45, clean=0.8, dataset="cifar10", eps=4 / 255)
    add_run(store, aa=0.3, pgd=0.35, clean=0.7, dataset="cifar100", eps=EPS)
    data = json.loads(export(capsys, tmp_path, "json"))  # no dataset filter: the settings of measured rows
    assert {r["id"] for r in data["references"]} == {"WEAT-cifar100", "WEAT-TRADES-cifar100"}
    data = json.loads(export(capsys, tmp_path, "json", "--dataset", "cifar10", "--eps", "4/255"))
    assert len(data["measured"]) == 1 and data["references"] == []


FORMATS = ["table", "markdown", "csv", "json", "html"]


def test_failed_interrupted_and_running_runs_never_appear(capsys, tmp_path):
    """Runs that stored results and then did not finish (a failure, Ctrl-C, a run still going or killed)
    appear in no format, grouped or not, and never count as a seed of a completed configuration."""
    store = Store(tmp_path)
    done = add_run(store, aa=0.4, pgd=0.45, clean=0.8, seed=0)
    unfinished = [add_run(store, aa=0.9, pgd=0.95, clean=0.99, seed=seed, status=status)
                  for seed, status in ((1, "failed"), (2, "interrupted"), (3, "running"))]
    add_run(store, aa=0.9, pgd=0.95, clean=0.99, trainer="pgd", status="failed")  # a setting with no finished run
    assert [r.status for r in store.runs(status=None)] == ["done", "failed", "interrupted", "running", "failed"]
    for fmt in FORMATS:
        for extra in ((), ("--group-seeds",)):
            out = export(capsys, tmp_path, fmt, "--no-references", *extra)
            assert done in out and not any(run_id in out for run_id in unfinished), (fmt, extra)
            assert "99.0" not in out and "95.0" not in out and "│ pgd" not in out and "| pgd |" not in out, fmt
    data = json.loads(export(capsys, tmp_path, "json", "--group-seeds", "--no-references"))
    assert [(r["id"], r["n_seeds"]) for r in data["measured"]] == [(done, 1)]
    code, _, err = run_cli(capsys, "leaderboard", "--trainer", "pgd", "--store", tmp_path)
    assert code == 2 and "no completed runs match these filters" in err  # its failed run does not count


NORM_REFERENCES = """
[[references.robustness]]
id = "LinfRef"
method = "m"
architecture = "a"
dataset = "cifar10"
eps = "8/255"
autoattack = 41.0
source = "s"

[[references.robustness]]
id = "L2Ref"
method = "m"
architecture = "a"
dataset = "cifar10"
norm = "L2"
eps = 0.5
autoattack = 71.0
source = "s"

[[references.robustness]]
id = "L2RefOtherEps"
method = "m"
architecture = "a"
dataset = "cifar10"
norm = "L2"
eps = 0.25
autoattack = 80.0
source = "s"
"""


def test_norm_filter_applies_to_runs_and_reference_rows(capsys, tmp_path):
    store = Store(tmp_path)
    linf = add_run(store, aa=0.4, pgd=0.45, clean=0.8)
    l2 = add_run(store, aa=0.6, pgd=0.65, clean=0.85, eps=0.5, norm="L2")
    registry = tmp_path / "registry.toml"
    registry.write_text(NORM_REFERENCES)

    def board(*extra):
        data = json.loads(export(capsys, tmp_path, "json", "--registry", registry, *extra))
        return [r["id"] for r in data["measured"]], sorted(r["id"] for r in data["references"])

    # no filter: the references of the settings measured, each with its own norm and eps
    assert board() == ([l2, linf], ["L2Ref", "LinfRef"]) or board() == ([linf, l2], ["L2Ref", "LinfRef"])
    assert board("--norm", "L2") == ([l2], ["L2Ref"])
    assert board("--norm", "Linf") == ([linf], ["LinfRef"])
    assert board("--dataset", "cifar10", "--norm", "L2") == ([l2], ["L2Ref", "L2RefOtherEps"])
    code, _, err = run_cli(capsys, "leaderboard", "--norm", "L2", "--eps", "0.25", "--store", tmp_path)
    assert code == 2 and "no completed runs match these filters" in err
    for fmt in ("markdown", "csv", "html"):
        out = export(capsys, tmp_path, fmt, "--registry", registry, "--norm", "Linf")
        assert linf in out and "LinfRef" in out and l2 not in out and "L2Ref" not in out, fmt


def test_group_seeds_gives_mean_and_std(capsys, tmp_path):
    store = Store(tmp_path)
    aas = [0.41, 0.44, 0.40]
    ids = [add_run(store, aa=a, pgd=a + 0.05, clean=0.8, seed=s) for s, a in enumerate(aas)]
    add_run(store, aa=0.2, pgd=0.25, clean=0.9, trainer="standard")
    data = json.loads(export(capsys, tmp_path, "json", "--group-seeds", "--no-references"))
    group, single = data["measured"]
    assert group["id"] == ids[0] and group["n_seeds"] == 3 and group["seed"] == "0,1,2"
    mean, sd = statistics.fmean(aas), statistics.stdev(aas)
    assert (group["test_aa_acc"], group["test_aa_acc_std"]) == pytest.approx((mean, sd))
    low, high = scipy.stats.t.interval(0.95, 2, loc=mean, scale=sd / 3 ** 0.5)
    assert (group["test_aa_acc_low"], group["test_aa_acc_high"]) == pytest.approx((low, high))  # t interval over seeds
    assert group["best_test_aa_acc"] == pytest.approx(statistics.fmean(aas) + 0.01)
    assert single["n_seeds"] == 1 and single["test_aa_acc_std"] is None  # no sample standard deviation of one seed
    rows = list(csv.DictReader(io.StringIO(export(capsys, tmp_path, "csv", "--group-seeds"))))
    assert float(rows[0]["test_aa_acc_std"]) == group["test_aa_acc_std"] and rows[0]["n_seeds"] == "3"
    md = markdown_tables(export(capsys, tmp_path, "markdown", "--group-seeds", "--no-references"))[0]
    header = md[0]
    assert md[1][header.index("seeds")] == "3"
    sds = f"{100 * group['test_pgd_acc_std']:.1f}/{100 * group['test_aa_acc_std']:.1f}"
    assert md[1][header.index("sd PGD/AA")] == sds


def test_sort_by_any_column_and_filter(capsys, tmp_path):
    store = Store(tmp_path)
    add_run(store, aa=0.4, pgd=0.45, clean=0.70, trainer="fgsm", wall_time=30, suite="co")
    add_run(store, aa=0.3, pgd=0.50, clean=0.90, trainer="pgd", wall_time=10, suite="co", track="cifar10-co")
    add_run(store, aa=0.2, pgd=0.20, clean=0.80, trainer="weat", wall_time=20)

    def trainers(*extra):
        return [r["trainer"] for r in json.loads(export(capsys, tmp_path, "json", *extra))["measured"]]

    assert trainers() == ["fgsm", "pgd", "weat"]
    assert trainers("--sort", "clean") == ["pgd", "weat", "fgsm"]
    assert trainers("--sort", "time", "--reverse") == ["pgd", "weat", "fgsm"]
    assert trainers("--sort", "trainer") == ["fgsm", "pgd", "weat"]
    assert trainers("--sort", "pgd_best") == ["pgd", "fgsm", "weat"]
    assert trainers("--suite", "co") == ["fgsm", "pgd"]
    assert trainers("--track", "cifar10-co") == ["pgd"]
    by_track = json.loads(export(capsys, tmp_path, "json", "--track", "cifar10-co"))["references"]
    assert len(by_track) == 7 and {r["dataset"] for r in by_track} == {"cifar10"}  # the track's dataset and eps
    assert trainers("--trainer", "weat", "--eps", "8/255", "--model", "preact-resnet18") == ["weat"]
    code, _, err = run_cli(capsys, "leaderboard", "--sort", "robustness", "--store", tmp_path)
    assert code == 2 and "cannot sort by 'robustness'; use one of: id, name, method, trainer" in err


def test_export_and_import_round_trip_as_robustbench_model_info(capsys, home, tmp_path):
    data = json.loads(export(capsys, home, "json"))
    best_run = data["measured"][0]
    target = tmp_path / "model_info" / "cifar10" / "Linf" / "energybench_pgd.json"
    target.parent.mkdir(parents=True)
    code, out, err = run_cli(capsys, "export", best_run["id"], "-o", target, "--name", "PGD-AT by energybench",
                             "--store", home)
    assert code == 0, err
    info = json.loads(target.read_text())
    assert list(info) == list(MODEL_INFO_FIELDS)  # RobustBench's field names, in its order
    assert info["eps"] == "8/255" and info["dataset"] == "cifar10" and info["architecture"] == "preact-resnet18"
    assert info["clean_acc"] == str(round(best_run["test_clean_acc"] * 100, 2)) == "78.33"
    assert info["autoattack_acc"] == "45.56" and info["additional_data"] is False

    published = tmp_path / "model_info" / "cifar10" / "Linf" / "Wong2020Fast_copy.json"
    published.write_text(json.dumps({  # RobustBench's model_info/cifar10/Linf/Wong2020Fast.json
        "link": "https://arxiv.org/abs/2001.03994", "name": "Fast is better than free: Revisiting adversarial "
        "training", "authors": "Eric Wong, Leslie Rice, J. Zico Kolter", "additional_data": False,
        "number_forward_passes": 1, "dataset": "cifar10", "venue": "ICLR 2020", "architecture": "ResNet-18",
        "eps": "8/255", "clean_acc": "83.34", "reported": "46.06", "autoattack_acc": "43.21"}))
    code, out, err = run_cli(capsys, "import-reference", target, published, "--store", home)
    assert code == 0, err
    assert "reference energybench_pgd: cifar10 Linf eps 8/255, clean 78.33%, AutoAttack 45.56%" in out
    refs = {r["id"]: r for r in json.loads(export(capsys, home, "json"))["references"]}
    ours = refs["energybench_pgd"]
    assert ours["test_clean_acc"] == pytest.approx(0.7833) and ours["test_aa_acc"] == 0.4556
    assert refs["energybench_pgd"]["rank"] is None and refs["energybench_pgd"]["method"] == "PGD-AT by energybench"
    assert refs["Wong2020Fast_copy"]["test_aa_acc"] == refs["Wong2020Fast"]["test_aa_acc"] == pytest.approx(0.4321)
    assert "Eric Wong" in refs["Wong2020Fast_copy"]["source"]

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"dataset": "cifar10", "eps": "8/255", "clean_acc": "80.1"}))
    code, _, err = run_cli(capsys, "import-reference", bad, "--store", home)
    assert code == 2 and "RobustBench model-info field(s) autoattack_acc missing" in err
    bad.write_text(json.dumps({"dataset": "cifar10", "eps": "8/255", "clean_acc": "80.1", "autoattack_acc": "140"}))
    code, _, err = run_cli(capsys, "import-reference", bad, "--store", home)
    assert code == 2 and "autoattack_acc=140 is not a percentage between 0 and 100" in err


def test_export_needs_autoattack_accuracy(capsys, tmp_path):
    store = Store(tmp_path)
    config = RunConfig(dataset="digits", eps=0.1)
    run_id = store.create_run(config.model_dump(), config.config_hash())
    store.add_results(run_id, "last", {"test_clean_acc": 0.9, "test_pgd_acc": 0.5})
    store.set_status(run_id, "done")
    code, _, err = run_cli(capsys, "export", run_id, "-o", tmp_path / "x.json", "--store", tmp_path)
    assert code == 2 and "has no test_aa_acc" in err and "--aa-points" in err


def test_a_malformed_reference_entry_is_named(capsys, home, tmp_path):
    registry = tmp_path / "registry.toml"
    registry.write_text('[[references.robustness]]\nid = "X"\nmethod = "m"\narchitecture = "a"\n'
                        'dataset = "cifar10"\neps = "8/255"\nsource = "s"\nautoattack = "lots"\n')
    code, _, err = run_cli(capsys, "leaderboard", "--registry", registry, "--store", home)
    assert code == 2 and "references.robustness[0]: autoattack must be a percentage like 43.21, got 'lots'" in err


def test_evaluation_sanity_warnings_are_flagged_on_the_leaderboard(capsys, tmp_path):
    store = Store(tmp_path / "store")
    masked = add_run(store, aa=0.2, pgd=0.6, clean=0.8, trainer="fgsm")
    store.add_results(masked, "last", {"test_fgsm_acc": 0.4, "test_check_randomized": 0.0,
                                       "test_check_probability_outputs": 0.0, "test_check_zero_grad_frac": 0.0})
    sound = add_run(store, aa=0.3, pgd=0.35, clean=0.8, trainer="pgd")
    store.add_results(sound, "last", {"test_fgsm_acc": 0.5, "test_check_randomized": 0.0,
                                      "test_check_probability_outputs": 0.0, "test_check_zero_grad_frac": 0.0})
    unchecked = add_run(store, aa=0.1, pgd=0.2, clean=0.8, trainer="rs-fgsm")  # stored before the checks existed
    code, out, _ = run_cli(capsys, "leaderboard", "--store", tmp_path / "store", "--format", "json",
                           "--no-references")
    assert code == 0
    warnings = {row["id"]: row["warnings"] for row in json.loads(out)["measured"]}
    assert warnings[sound] == "" and warnings[unchecked] is None
    assert warnings[masked].startswith("last: PGD leaves a higher accuracy (60.0%) than FGSM (40.0%)")
    code, out, _ = run_cli(capsys, "leaderboard", "--store", tmp_path / "store", "--format", "markdown",
                           "--no-references")
    (table,) = markdown_tables(out)
    checks = {row[table[0].index("run")]: row[table[0].index("checks")] for row in table[1:]}
    assert checks == {masked: "1 warn", sound: "ok", unchecked: "-"}
