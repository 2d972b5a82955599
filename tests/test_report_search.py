"""analysis.report on a runner.tune results directory: the search deck, read from its Marp markdown."""

import csv
import re
import warnings

import numpy as np
import pytest

from analysis import report
from analysis.load import label_part, short_value
from analysis.render import count_pdf_pages
from runner import store
from runner.spec import resolve
from tests.fixtures.fake_runs import fake_record

EPOCHS = 4


def write_search(out, n_trials=8, seed=0):
    """Trial runs as runner.tune leaves them (some stopped by ASHA) and tune/s/results.csv, best first."""
    rng = np.random.default_rng(seed)
    rows, test_map = [], {}
    for i in range(n_trials):
        sample = {"train.lr": float(10 ** rng.uniform(-3.5, -1.5)), "loss.margin": float(rng.uniform(0.05, 0.4)),
                  "embedding.dim": int(rng.choice([4, 8]))}
        cfg = resolve({"data": {"name": "digits", "val_fraction": 0.1}, "train": {"epochs": EPOCHS, "save_every": 2},
                       "loss": {"name": "TripletMarginLoss"}},
                      {"train": {"lr": sample["train.lr"]}, "loss": {"margin": sample["loss.margin"]},
                       "embedding": {"dim": sample["embedding.dim"]}})
        status = "stopped" if i % 3 == 2 else "completed"
        rec = fake_record(cfg, status, stop_epoch=1 + i % 2)
        store.write_run(store.run_path(out, rec.run_id), rec)
        test_map[rec.run_id] = rec.attrs["metrics"]["map_at_r"]
        rows.append({"trial": f"abc{i:02d}_0000{i}", "run_id": rec.run_id, **sample,
                     "val_map_at_r": rec.attrs["metrics"]["map_at_r"] + 0.01 * rng.normal(),
                     "test_knn1": rec.attrs["metrics"]["knn1"], "epochs": rec.attrs["epochs_run"], "status": status})
    rows.sort(key=lambda r: -r["val_map_at_r"])
    folder = out / "tune" / "s"
    folder.mkdir(parents=True)
    with open(folder / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows, test_map


@pytest.fixture(scope="module")
def deck(tmp_path_factory):
    out = tmp_path_factory.mktemp("search")
    rows = write_search(out / "results")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = report.build_report(out / "results", out / "report",
                                     report.Options(methods=("tsne",), max_points=150, tensorboard=False))
    md = (out / "report" / "report.md").read_text()
    titles = re.findall(r"^# (.+)$", md, flags=re.M)
    return rows, result, md, titles


def test_search_deck_has_its_own_slides_and_no_matched_pairs(deck):
    (rows, _), result, md, titles = deck
    assert result["slides"] == len(titles) <= 10 and count_pdf_pages(result["pdf"]) == len(titles)
    assert any("best trials" in t for t in titles) and any("against each searched hyperparameter" in t for t in titles)
    assert "Where ASHA stopped trials" in titles
    assert any("test split (chosen on validation)" in t for t in titles)
    assert not any("paired" in t.lower() or "mining help" in t for t in titles)
    assert "matched pairs" not in md


def test_search_deck_numbers_come_from_the_trials(deck):
    rows, result, md, titles = deck
    rows, test_map = rows
    best = rows[0]
    n_stopped = sum(r["status"] == "stopped" for r in rows)
    assert f"ASHA stopped {n_stopped} of {len(rows)} trials" in md
    assert f"val MAP@R {best['val_map_at_r']:.3f}" in md
    assert f"lr={best['train.lr']:.3g}" in md and f"m={best['loss.margin']:.3g}" in md
    assert f"its test MAP@R is {test_map[best['run_id']]:.3f}" in md  # the chosen trial's run, by its protocol
    assert re.search(r"\d+ points per map \(cap 150", md)  # the point cap is on the t-SNE slide


def test_labels_never_show_long_floats(deck):
    _, _, md, titles = deck
    assert not re.search(r"\d\.\d{7,}", re.sub(r"<!--.*?-->", "", md, flags=re.S))
    assert all(len(t) < 90 for t in titles)


@pytest.mark.parametrize("key, value, text", [
    ("loss.margin", 0.27384021296942856, "m=0.274"), ("train.lr", "0.004276125156307378", "lr=0.00428"),
    ("embedding.dim", 32, "d=32"), ("miner.name", None, "no miner"), ("miner.name", "nan", "no miner"),
    ("miner.name", "TripletMarginMiner", "+TripletMargin"), ("loss.name", "ContrastiveLoss", "Contrastive"),
    ("train.weight_decay", 1.3904097446453846e-05, "weight_decay=1.39e-05")])
def test_one_label_helper_rounds_and_shortens(key, value, text):
    assert label_part(key, value) == text
    assert short_value(key, value) == text.split("=")[-1] if "=" in text else True
