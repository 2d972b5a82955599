"""python -m analysis.report end to end on a small grid of fake runs: PDF pages, figures, Marp, tables, TensorBoard."""

import os
import re
import time
import warnings

import pandas as pd
import pytest

from analysis import background, report
from analysis.render import count_pdf_pages
from tests.test_analysis import baseline_cache, shared_grid

FIGURES = ("table_accuracy", "paired", "sweeps", "loss", "tsne", "umap", "hierarchy", "retrieval", "openset")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    results = shared_grid(tmp_path_factory)
    out = tmp_path_factory.mktemp("report")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = report.build_report(results, out, report.Options(max_points=200, cache_dir=baseline_cache(tmp_path_factory)))
    return results, out, result


def test_pdf_has_ten_pages(built):
    _, out, result = built
    assert result["slides"] == 10 and count_pdf_pages(out / "report.pdf") == 10


def test_every_figure_is_produced(built):
    _, out, result = built
    for name in FIGURES:
        png = out / "figures" / f"{name}.png"
        assert png.exists() and png.stat().st_size > 5000, name
    assert result["timings"]["total_s"] > 0 and (out / "timings.json").exists()


def test_marp_markdown_references_the_figures(built):
    _, out, _ = built
    md = (out / "report.md").read_text()
    assert md.startswith("---\nmarp: true\n")
    body = md.split("---\n", 2)[2]
    assert len(re.findall(r"^---$", body, flags=re.M)) == 9  # 10 slides
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(images) == 9 and all((out / p).exists() for p in images)


def test_tables_are_written_and_skips_listed(built):
    results, out, result = built
    acc = pd.read_csv(out / "tables" / "accuracy.csv")
    assert {"run", "baseline"} == set(acc["kind"]) and (acc["kind"] == "run").sum() == 8
    assert {"knn1_mean", "knn1_ci", "map_at_r_mean", "map_at_r_ci"} <= set(acc.columns)
    for ext in ("md", "tex"):
        assert "±" in (out / "tables" / f"accuracy.{ext}").read_text() or ext == "tex"
    assert "\\pm" in (out / "tables" / "accuracy.tex").read_text()
    paired = pd.read_csv(out / "tables" / "paired.csv")
    assert set(paired["comparison"]) == {"mining vs none", "triplet vs contrastive"}
    skipped = pd.read_csv(out / "tables" / "skipped.csv")
    assert len(skipped) == 3 and len(result["skipped"]) == 3


def test_tensorboard_hparams_and_projector(built):
    _, out, _ = built
    tb = out / "tensorboard"
    assert len({p.parent for p in (tb / "hparams").glob("*/events.out.tfevents.*")}) == 17  # one session per run
    config = (tb / "projector" / "projector_config.pbtxt").read_text()
    assert "sprite" in config and config.count("embeddings {") >= 2
    assert list((tb / "projector").rglob("sprite.png"))


def test_tensorboard_sessions_read_back_as_the_runs_recorded_them(built):
    """Each HParams session, read by TensorBoard's own loader: the hparams, the final metrics, the
    step curves (subsampled rows of the run's history) and the per-epoch metrics of its run.h5."""
    import numpy as np
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from analysis.load import load_history
    results, out, _ = built
    paths = {p.parent.name: p for p in results.rglob("run.h5")}
    session = sorted((out / "tensorboard" / "hparams").iterdir())[0]
    acc = EventAccumulator(str(session))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    steps, epochs = load_history(paths[session.name]), load_history(paths[session.name], "epochs")
    loss = acc.Scalars("step/loss")
    every = loss[1].step - loss[0].step  # the run's steps thinned to at most 200 rows, evenly
    assert 1 <= every <= max(1, len(steps) // 200 + 1) and [e.step for e in loss] == steps["step"].tolist()[::every]
    np.testing.assert_allclose([e.value for e in loss], steps.set_index("step").loc[[e.step for e in loss], "loss"],
                               rtol=1e-6)
    assert {"step/active_fraction", "step/pos_distance", "hparam/map_at_r"} <= tags
    m = acc.Scalars("epoch/map_at_r")
    assert [e.step for e in m] == epochs["epoch"].tolist()
    np.testing.assert_allclose([e.value for e in m], epochs["map_at_r"], rtol=1e-6)
    plugins = acc.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"} <= set(plugins)


def test_cli_maps_flags_to_options(built, tmp_path, monkeypatch, capsys):
    results, _, result = built
    seen = {}

    def fake_build(res_dir, out, opts):
        seen.update(results=res_dir, out=out, opts=opts)
        return {**result, "pdf": tmp_path / "report.pdf"}

    monkeypatch.setattr(report, "build_report", fake_build)
    assert report.main([str(results), "--out", str(tmp_path), "--no-umap", "--no-tensorboard", "--no-baselines",
                        "--max-points", "5000", "--metric", "knn1", "--k", "3"]) == 0
    opts = seen["opts"]
    assert opts.methods == ("tsne",) and not opts.tensorboard and not opts.baselines
    assert opts.max_points == 2000 and opts.metric == "knn1" and opts.k == 3  # projections capped at 2,000 points
    text = capsys.readouterr().out
    assert "10 slides" in text and "total_s=" in text


def test_a_worker_runs_calls_in_order_in_another_process_and_hands_back_their_errors():
    worker = background.Worker()
    try:
        first, failing, last = worker.submit(os.getpid), worker.submit(divmod, 1, 0), worker.submit(divmod, 7, 2)
        assert worker.result(last) == (3, 1)  # the calls before it are received on the way
        assert worker.result(first) != os.getpid() and not worker.busy()
        with pytest.raises(ZeroDivisionError):
            worker.result(failing)
        worker.submit(time.sleep, 30)
        assert worker.busy()
    finally:
        t0 = time.perf_counter()
        worker.stop()
    assert time.perf_counter() - t0 < 10 and worker._proc.exitcode is not None  # stopped, not waited for


def test_timings_count_the_tensorboard_process(built):
    timings = built[2]["timings"]
    assert timings["tensorboard_s"] > 0 and timings["cpu"]["tensorboard_s"] > 0
    assert timings["total_cpu_s"] >= timings["cpu"]["tensorboard_s"]
