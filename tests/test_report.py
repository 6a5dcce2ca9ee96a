"""`energybench report`: one self-contained HTML page, checked in a real (headless) Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from importlib import metadata

import numpy as np
import pytest
from datafiles import run_cli
from PIL import Image

from energybench.config import RunConfig, load_catalogue
from energybench.ops.energy import QUANTILES
from energybench.reporting.report import write_report
from energybench.storage.store import GenerativeRecord, Store, new_id

EPS = 8 / 255


def add_run(store: Store, *, trainer: str, seed: int, suite: str | None, epochs: int, dataset: str = "cifar10",
            eps: float = EPS) -> str:
    """A completed run (CIFAR-10 by default) with per-epoch traces (CO in the last epoch) and test energy quantiles."""
    config = RunConfig(dataset=dataset, model="preact-resnet18", trainer=trainer, eps=eps, seed=seed, epochs=3)
    run_id = store.create_run(config.model_dump(), config.config_hash(), suite=suite)
    for epoch in range(epochs):
        store.add_epoch(run_id, epoch, {"train_dE_mean": -0.1 * epoch, "val_dE_mean": -0.2 * epoch,
                                        "val_clean_acc": 0.5 + 0.1 * epoch, "val_fgsm_acc": 0.3 + 0.1 * epoch,
                                        "val_pgd_acc": 0.3 - 0.1 * epoch, "co": epoch == epochs - 1})
    last = {"test_clean_acc": 0.8, "test_pgd_acc": 0.4, "test_aa_acc": 0.38 + 0.01 * seed}
    for key, center in (("test_energy", -8.0), ("test_energy_adv", -6.5), ("test_dE", -1.5), ("test_dE_joint", -3.0)):
        last[f"{key}_mean"] = center
        last.update({f"{key}_q{round(q * 100):02d}": center + 4 * (q - 0.5) for q in QUANTILES})
    store.add_results(run_id, "last", last)
    store.add_results(run_id, "best", last)
    store.set_status(run_id, "done", wall_time=60.0)
    return run_id


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.fail("headless Chromium is needed for this test: apt-get install -y chromium")


def rendered_dom(page, tmp_path) -> str:
    """The page's DOM after load, as Chromium renders it (its script records each image's decoded size)."""
    result = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=5000", "--dump-dom",
         page.as_uri()], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_report_renders_tables_and_images_in_a_real_browser(capsys, tmp_path):
    home = tmp_path / "store"
    store = Store(home)
    suite_runs = [add_run(store, trainer="fgsm", seed=s, suite="co-demo", epochs=3) for s in (0, 1)]
    other = add_run(store, trainer="pgd", seed=0, suite=None, epochs=2)
    add_run(store, trainer="weat", seed=0, suite=None, epochs=2)  # not named: stays out of the report
    grid_dir = tmp_path / "samples"
    grid_dir.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(grid_dir / "sgld.png")
    store.add_generative(GenerativeRecord(
        id=new_id(), created=time.time(), model_ref=other, checkpoint="best", dataset="cifar10",
        model="preact-resnet18", sampler="sgld", params={"steps": 20}, seed=0, n=20,
        metrics={"FID[cifar10-cnn]": 91.25, "IS[cifar10-cnn]": 3.5}, steps_mean=20.0, wall_time=1.5,
        out_dir=str(grid_dir)))

    page = tmp_path / "report.html"
    code, out, err = run_cli(capsys, "report", "co-demo", other, "-o", page, "--store", home)
    assert code == 0, err
    text = page.read_text()
    assert not re.search(r'(src|href)="(https?:)?//', text)  # self-contained: nothing to fetch
    for expected in ('"trainer": "fgsm"', '"seed": 1', metadata.version("torch"), "pyautoattack",
                     "FID@20[cifar10-cnn]"):
        assert expected in text, expected

    dom = rendered_dom(page, tmp_path)
    images = re.findall(r"<img [^>]*>", dom)
    # dE traces and energy distributions for 3 runs, plus one sample grid
    assert len(images) == 7
    widths = [int(w) for w in re.findall(r'data-natural-width="(\d+)"', dom)]
    assert len(widths) == 7 and all(w > 100 for w in widths[:-1]) and widths[-1] == 60
    assert 'data-images-decoded="7/7"' in dom
    for table in ("leaderboard measured", "leaderboard generative", "leaderboard env"):
        assert f'class="{table}"' in dom, table
    measured = re.search(r'<table class="leaderboard measured"[^>]*>.*?</table>', dom, re.S).group(0)
    assert all(run_id in measured for run_id in suite_runs + [other]) and measured.count("<tr data-run=") == 3
    references = re.findall(r'<tr class="reference"[^>]*>.*?</tr>', measured, re.S)  # in the setting's own table
    assert any("Rice2020Overfitting" in row for row in references) and all("<td>-</td>" in r for r in references)

    code, _, err = run_cli(capsys, "report", "no-such-run", "-o", page, "--store", home)
    assert code == 2 and "unknown run 'no-such-run'" in err


def test_a_report_of_several_settings_ranks_each_in_its_own_table(tmp_path):
    store = Store(tmp_path / "store")
    cifar = [add_run(store, trainer=t, seed=0, suite="mixed", epochs=1) for t in ("fgsm", "pgd")]
    other_eps = add_run(store, trainer="fgsm", seed=0, suite="mixed", epochs=1, eps=16 / 255)
    svhn = add_run(store, trainer="fgsm", seed=0, suite="mixed", epochs=1, dataset="svhn")
    page = write_report(store, load_catalogue(), ["mixed"], tmp_path / "report.html").read_text()
    tables = re.findall(r'<table class="leaderboard measured" data-setting="([^"]*)">(.*?)</table>', page, re.S)
    assert [setting for setting, _ in tables] == ["cifar10, Linf eps 16/255", "cifar10, Linf eps 8/255",
                                                  "svhn, Linf eps 8/255"]
    rows = [re.findall(r'<tr data-run="([^"]+)"><td>([^<]*)</td>', body) for _, body in tables]
    assert rows[0] == [(other_eps, "1")] and rows[2] == [(svhn, "1")]
    assert sorted(run for run, _ in rows[1]) == sorted(cifar) and {rank for _, rank in rows[1]} == {"1"}  # a tie
