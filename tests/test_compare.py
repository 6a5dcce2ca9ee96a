"""Ranks the data can support: ties, paired tests on per-point correctness, the unpaired fallback,
one ranking per setting, and `energybench compare`."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
from datafiles import run_cli
from scipy import stats

from energybench.config import RunConfig
from energybench.reporting.formats import decode_points
from energybench.storage.store import Store

N = 1000


def correct(indices, n: int = N) -> np.ndarray:
    vector = np.zeros(n, dtype=bool)
    vector[list(indices)] = True
    return vector


def add_run(store: Store, pgd: np.ndarray, *, trainer: str = "fgsm", seed: int = 0, dataset: str = "fashion-mnist",
            eps: float = 0.3, norm: str = "Linf", aa: np.ndarray | None = None, points: bool = True) -> str:
    """A completed run whose last and best checkpoints got exactly the test points ``pgd`` (and ``aa``) right."""
    aa = pgd[:100] if aa is None else aa
    config = RunConfig(dataset=dataset, model="small-cnn", trainer=trainer, eps=eps, norm=norm, seed=seed,
                       eval={"test_points": len(pgd), "aa_points": len(aa)})
    run_id = store.create_run(config.model_dump(), config.config_hash())
    clean = np.ones(len(pgd), dtype=bool)
    for checkpoint in ("best", "last"):
        store.add_results(run_id, checkpoint, {"test_clean_acc": 1.0, "test_pgd_acc": float(pgd.mean()),
                                               "test_aa_acc": float(aa.mean()), "test_aa_points": float(len(aa))})
        if points:
            store.add_points(run_id, checkpoint, {"test_clean": clean, "test_pgd": pgd, "test_aa": aa})
    store.set_status(run_id, "done", wall_time=1.0)
    return run_id


def leaderboard_json(capsys, home, *extra):
    code, out, err = run_cli(capsys, "leaderboard", "--format", "json", "--no-references", "--store", home, *extra)
    assert code == 0, err
    return json.loads(out)


@pytest.fixture
def store_dir(tmp_path):
    """Four runs on the same 1000 test points: A >> B, B ~ C (not significant), C > D only when paired."""
    store = Store(tmp_path / "store")
    ids = {"A": add_run(store, correct(range(700)), trainer="pgd"),
           "B": add_run(store, correct(range(500)), trainer="trades"),
           # 15 points B gets right and C not, 10 the other way round: p = 0.42
           "C": add_run(store, correct([*range(485), *range(500, 510)]), trainer="n-fgsm"),
           # D gets right a subset of C's points, 30 fewer: 46.5% vs 49.5%
           "D": add_run(store, correct([*range(455), *range(500, 510)]), trainer="fgsm")}
    return tmp_path / "store", ids


def test_rows_share_a_rank_unless_a_paired_test_separates_them(capsys, store_dir):
    home, ids = store_dir
    data = leaderboard_json(capsys, home)
    measured = data["measured"]
    assert [r["id"] for r in measured] == [ids[k] for k in "ABCD"]
    assert [r["rank"] for r in measured] == [1, 2, 2, 4]
    assert {r["ranked_by"] for r in measured} == {"test_pgd_acc"}  # AutoAttack ran on 100 points only
    assert [r["test_above"] for r in measured] == [None] + ["exact McNemar"] * 3
    assert measured[2]["p_above"] == pytest.approx(stats.binomtest(15, 25, 0.5).pvalue)
    # D is tested against the first row of the tie block above it (B), not against C: 45 vs 10 discordant points
    assert [r["compared_with"] for r in measured] == [None, ids["A"], ids["B"], ids["B"]]
    assert measured[3]["p_above"] == pytest.approx(stats.binomtest(45, 55, 0.5).pvalue)
    low, high = stats.binomtest(700, N).proportion_ci(method="wilson")
    first = measured[0]
    bounds = (first["test_pgd_acc_low"], first["test_pgd_acc_high"], first["test_pgd_acc_n"])
    assert bounds == pytest.approx((low, high, N))
    assert measured[0]["test_aa_acc_n"] == 100
    (setting,) = data["settings"]
    assert "ranked by PGD accuracy" in setting["caption"] and "exact McNemar" in setting["caption"]
    assert "AutoAttack ran on fewer than 1000 points" in setting["caption"]

    code, out, _ = run_cli(capsys, "leaderboard", "--store", home, "--no-references")
    assert code == 0
    line = next(line for line in out.splitlines() if ids["A"] in line)
    assert f"70.0/70.0 ±{100 * max(0.7 - low, high - 0.7):.1f}" in line and "1000/100" in line

    # --sort by an accuracy ranks with the same tests; by anything else it only orders
    by_clean = leaderboard_json(capsys, home, "--sort", "clean")["measured"]
    assert [r["rank"] for r in by_clean] == [1, 1, 1, 1] and by_clean[0]["ranked_by"] == "test_clean_acc"
    by_trainer = leaderboard_json(capsys, home, "--sort", "trainer")["measured"]
    assert [r["trainer"] for r in by_trainer] == ["fgsm", "n-fgsm", "pgd", "trades"]
    assert [r["rank"] for r in by_trainer] == [1, 2, 3, 4] and {r["p_above"] for r in by_trainer} == {None}


def test_an_old_store_without_per_point_data_opens_and_ranks_with_the_unpaired_fallback(capsys, store_dir):
    home, ids = store_dir
    db = sqlite3.connect(home / "store.sqlite")
    db.execute("DROP TABLE points")  # as a store written before per-point correctness was kept
    db.commit()
    db.close()
    store = Store(home)
    assert store.points(ids["A"]) == {}
    measured = leaderboard_json(capsys, home)["measured"]
    assert [r["test_above"] for r in measured] == [None] + ["Fisher exact (unpaired)"] * 3
    # without the pairing, 49.5% vs 46.5% on 1000 points is no longer a significant difference
    assert [r["rank"] for r in measured] == [1, 2, 2, 2]
    assert measured[3]["p_above"] == pytest.approx(stats.fisher_exact([[500, 500], [465, 535]]).pvalue)
    assert measured[0]["test_pgd_acc_n"] == N and measured[0]["points"] == {}  # n from the run's protocol
    code, out, _ = run_cli(capsys, "leaderboard", "--store", home, "--no-references")
    assert code == 0 and "unpaired fallback" in out and "0.128*" in out


def test_a_row_tied_with_the_row_above_but_separated_from_the_first_of_its_block_gets_its_own_rank(capsys, tmp_path):
    """37.5 %, 36.0 %, 35.0 % on the same 1000 points: A-B p = 0.105, B-C p = 0.203, A-C p = 0.031."""
    a, b, c = (correct(range(375)), correct([*range(330), *range(375, 405)]),
               correct([*range(300), *range(375, 425)]))
    store = Store(tmp_path / "with-b")
    ids = [add_run(store, v, trainer=t) for v, t in ((a, "pgd"), (b, "trades"), (c, "fgsm"))]
    measured = leaderboard_json(capsys, tmp_path / "with-b")["measured"]
    assert [r["rank"] for r in measured] == [1, 1, 3]
    assert [r["compared_with"] for r in measured] == [None, ids[0], ids[0]]
    assert measured[2]["p_above"] == pytest.approx(stats.binomtest(75, 125, 0.5).pvalue)
    without_b = Store(tmp_path / "without-b")
    add_run(without_b, a, trainer="pgd")
    add_run(without_b, c, trainer="fgsm")
    assert [r["rank"] for r in leaderboard_json(capsys, tmp_path / "without-b")["measured"]] == [1, 2]
    code, out, _ = run_cli(capsys, "leaderboard", "--store", tmp_path / "with-b", "--no-references")
    assert code == 0 and "tie blocks" in out and "not necessarily from every row in it" in " ".join(out.split())


def test_per_point_correctness_round_trips_through_the_json_export(capsys, tmp_path):
    store = Store(tmp_path)
    rng = np.random.default_rng(0)
    pgd, aa = rng.random(37) < 0.4, rng.random(13) < 0.3  # lengths that do not fill their last byte
    run_id = add_run(store, pgd, aa=aa)
    (row,) = leaderboard_json(capsys, tmp_path)["measured"]
    assert row["id"] == run_id
    for checkpoint in ("best", "last"):
        assert np.array_equal(decode_points(row["points"][checkpoint]["test_pgd"]), pgd)
        assert np.array_equal(decode_points(row["points"][checkpoint]["test_aa"]), aa)
        assert np.array_equal(decode_points(row["points"][checkpoint]["test_pgd"]), store.points(run_id)[checkpoint]
                              ["test_pgd"])


def test_settings_are_never_ranked_together(capsys, tmp_path):
    store = Store(tmp_path)
    fmnist = add_run(store, correct(range(300)), dataset="fashion-mnist", eps=0.3)
    other_eps = add_run(store, correct(range(900)), dataset="fashion-mnist", eps=0.1)
    digits = add_run(store, correct(range(800)), dataset="digits", eps=0.3)
    data = leaderboard_json(capsys, tmp_path)
    assert [s["setting"] for s in data["settings"]] == ["digits, Linf eps 0.3",
                                                        "fashion-mnist, Linf eps 0.1",
                                                        "fashion-mnist, Linf eps 0.3"]
    assert [(r["id"], r["rank"]) for r in data["measured"]] == [(digits, 1), (other_eps, 1), (fmnist, 1)]
    code, out, _ = run_cli(capsys, "leaderboard", "--format", "markdown", "--store", tmp_path, "--no-references")
    assert code == 0 and out.count("### ") == 3 and out.count("| # |") == 3
    code, out, _ = run_cli(capsys, "leaderboard", "--format", "html", "--store", tmp_path, "--no-references")
    assert code == 0 and out.count('<table class="leaderboard measured"') == 3 and out.count("<tr data-run=") == 3


def test_compare_two_runs_gives_the_paired_test_per_metric(capsys, store_dir):
    home, ids = store_dir
    code, out, err = run_cli(capsys, "compare", ids["C"], ids["D"], "--format", "json", "--store", home)
    assert code == 0, err
    data = json.loads(out)
    assert data["a"]["runs"] == [ids["C"]] and data["level"] == 0.95
    metrics = {m["metric"]: m for m in data["metrics"]}
    assert set(metrics) == {"test_clean_acc", "test_pgd_acc", "test_aa_acc"}
    pgd = metrics["test_pgd_acc"]
    assert pgd["paired"] and pgd["test"] == "exact McNemar" and pgd["significant"]
    assert pgd["difference"] == pytest.approx(0.03) and pgd["low"] < 0.03 < pgd["high"]
    assert pgd["p"] == pytest.approx(stats.binomtest(30, 30, 0.5).pvalue)
    assert pgd["a"]["n"] == N and pgd["a"]["value"] == pytest.approx(0.495)
    assert metrics["test_clean_acc"]["p"] == 1.0 and not metrics["test_clean_acc"]["significant"]
    assert data["margin"] == 0.01 and pgd["verdict"] == "A higher"
    # both right on every point: the interval (Tango's, +-0.38 points) lies inside the 1-point margin
    assert metrics["test_clean_acc"]["verdict"] == "same within ±1 point"

    code, out, _ = run_cli(capsys, "compare", ids["C"], ids["D"], "--store", home)
    assert code == 0
    line = next(line for line in out.splitlines() if line.startswith("│ PGD"))
    assert "+3.0" in line and "<0.001 *" in line and "A higher" in line and "exact McNemar" in line


def test_compare_says_no_difference_only_inside_the_margin(capsys, store_dir):
    home, ids = store_dir

    def pgd(*extra):
        code, out, err = run_cli(capsys, "compare", ids["B"], ids["C"], "--format", "json", "--store", home, *extra)
        assert code == 0, err
        return next(m for m in json.loads(out)["metrics"] if m["metric"] == "test_pgd_acc")

    default = pgd()  # 15 vs 10 discordant points: p = 0.42, an interval about 2 points wide
    assert not default["significant"] and default["low"] < -0.004 and default["high"] > 0.014
    assert default["verdict"] == "not told apart (interval wider than ±1 point)"
    assert pgd("--margin", "3")["verdict"] == "same within ±3 points"
    code, _, err = run_cli(capsys, "compare", ids["B"], ids["C"], "--margin", "150", "--store", home)
    assert code == 2 and err.count("\n") == 1 and "150" in err and "--margin" in err


def test_compare_seed_groups_with_welchs_t_test(capsys, tmp_path):
    store = Store(tmp_path)
    strong = [add_run(store, correct(range(600 + 5 * s)), trainer="pgd", seed=s) for s in range(3)]
    weak = [add_run(store, correct(range(500 + 7 * s)), trainer="fgsm", seed=s) for s in range(3)]
    code, out, err = run_cli(capsys, "compare", f"group:{strong[1]}", f"group:{weak[0]}", "--format", "json",
                             "--store", tmp_path)
    assert code == 0, err
    data = json.loads(out)
    assert data["a"]["runs"] == strong and data["b"]["seeds"] == [0, 1, 2]
    pgd = next(m for m in data["metrics"] if m["metric"] == "test_pgd_acc")
    a, b = [0.600, 0.605, 0.610], [0.500, 0.507, 0.514]
    expected = stats.ttest_ind(a, b, equal_var=False)
    assert pgd["test"] == "Welch t over seeds" and pgd["p"] == pytest.approx(expected.pvalue)
    # the t interval over seeds (+-1.2 points) is narrower than the sampling error of the 1000 test points all seeds
    # share: the group's interval is the Wilson interval of its mean then
    t_low, t_high = stats.t.interval(0.95, 2, loc=np.mean(a), scale=stats.sem(a))
    w_low, w_high = stats.binomtest(605, N).proportion_ci(method="wilson")
    assert w_low < t_low < t_high < w_high and (pgd["a"]["low"], pgd["a"]["high"]) == pytest.approx((w_low, w_high))
    # grouped leaderboard: sample standard deviations, and the groups ranked with the same test
    measured = leaderboard_json(capsys, tmp_path, "--group-seeds")["measured"]
    assert [r["n_seeds"] for r in measured] == [3, 3] and measured[1]["test_above"] == "Welch t over seeds"
    assert measured[0]["test_pgd_acc_std"] == pytest.approx(np.std(a, ddof=1)) and measured[0]["points"] is None


def test_seeds_that_agree_by_chance_claim_no_more_than_their_test_points_allow(capsys, tmp_path):
    """AutoAttack on 100 points, three seeds each: 12, 13, 12 against 17, 18, 16 correct. Welch's test over the
    seeds alone says p = 0.005, but a binomial count on 100 points varies by about 3.5 points from seed to seed:
    the seeds agreeing this closely is luck, and the means 12.3% and 17.0% on 100 points are not told apart."""
    store = Store(tmp_path)
    pgd = correct(range(500))
    low = [add_run(store, pgd, trainer="rs-fgsm", seed=s, aa=correct(range(k), 100))
           for s, k in enumerate((12, 13, 12))]
    high = [add_run(store, pgd, trainer="fgsm", seed=s, aa=correct(range(k), 100))
            for s, k in enumerate((17, 18, 16))]
    code, out, err = run_cli(capsys, "compare", f"group:{high[0]}", f"group:{low[0]}", "--format", "json",
                             "--store", tmp_path)
    assert code == 0, err
    aa = next(m for m in json.loads(out)["metrics"] if m["metric"] == "test_aa_acc")
    welch = stats.ttest_ind([0.17, 0.18, 0.16], [0.12, 0.13, 0.12], equal_var=False)
    assert welch.pvalue < 0.01  # the seeds alone would claim a difference
    fisher = stats.fisher_exact([[17, 83], [12, 88]]).pvalue  # the means (17.0%, 12.3%) as counts on 100 points
    assert aa["test"] == "Fisher exact (unpaired) on the seed means" and aa["p"] == pytest.approx(fisher)
    assert not aa["significant"] and aa["low"] < 0 < aa["high"]
    assert aa["verdict"] == "not told apart (interval wider than ±1 point)"
    welch_interval = welch.confidence_interval(0.95)
    assert aa["low"] < welch_interval.low and aa["high"] > welch_interval.high  # widened, never narrowed


def test_grouped_leaderboard_counts_the_seeds_with_catastrophic_overfitting(capsys, tmp_path):
    store = Store(tmp_path)
    runs = [add_run(store, correct(range(400 + 10 * s)), seed=s) for s in range(3)]
    for run_id, co in zip(runs, (1.0, 0.0, 0.0)):
        for checkpoint in ("best", "last"):
            store.add_results(run_id, checkpoint, {"co": co})
    code, out, err = run_cli(capsys, "leaderboard", "--group-seeds", "--store", tmp_path, "--no-references")
    assert code == 0, err
    line = next(line for line in out.splitlines() if runs[0] in line)
    assert " 1/3 " in line and "yes" not in line
    code, out, _ = run_cli(capsys, "leaderboard", "--store", tmp_path, "--no-references")
    assert [next(c.strip() for c in line.split("│") if c.strip() in ("yes", "no"))
            for r in runs for line in out.splitlines() if r in line] == ["yes", "no", "no"]


def test_compare_refuses_other_settings_and_falls_back_for_other_points(capsys, tmp_path):
    store = Store(tmp_path)
    base = add_run(store, correct(range(500)))
    other_data = add_run(store, correct(range(500)), dataset="digits")
    other_eps = add_run(store, correct(range(500)), eps=0.1)
    fewer = add_run(store, correct(range(250), n=500))
    code, _, err = run_cli(capsys, "compare", base, other_data, "--store", tmp_path)
    assert code == 2 and err.count("\n") == 1
    assert "their dataset differs (fashion-mnist vs digits)" in err
    code, _, err = run_cli(capsys, "compare", base, other_eps, "--store", tmp_path)
    assert code == 2 and "their eps differs (0.3 vs 0.1)" in err
    code, out, err = run_cli(capsys, "compare", base, fewer, "--format", "json", "--store", tmp_path)
    assert code == 0, err
    pgd = next(m for m in json.loads(out)["metrics"] if m["metric"] == "test_pgd_acc")
    assert not pgd["paired"] and pgd["test"] == "Fisher exact (unpaired)"
    assert "different test points (1000 vs 500)" in pgd["note"]
    code, _, err = run_cli(capsys, "compare", base, "nope", "--store", tmp_path)
    assert code == 2 and "unknown run 'nope'" in err
