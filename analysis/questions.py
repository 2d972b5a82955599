"""The ten slides: each answers one question of the course with its figure or table.

1 summary and answers · 2 accuracy table · 3 contrastive vs triplet, mining vs none ·
4 sweeps (dim, margin) · 5 loss evolution and diagnostics · 6 t-SNE · 7 UMAP (+ d=2 run) ·
8 class hierarchy · 9 retrieval gallery · 10 softmax + open-set rejection.
Answers are written from the numbers, never canned.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import metrics, search, tables
from analysis.curves import is_swept, loss_figure, pick_curve_configs, sweep_figure
from analysis.embeddings import class_names_of, embedding_figure
from analysis.hierarchy import closest_pairs, dendrogram_figure
from analysis.load import METRIC_LABELS, load_history, short_loss_name
from analysis.openset import openset_figure
from analysis.render import Slide, table_figure
from analysis.gallery import gallery_figure, neighbours, pick_queries
from runner.store import read_attrs, read_final

TOP_ROWS = 9


SLIDE_METRICS = ("knn1", "p_at_1", "map_at_r", "recall_at_1", "recall_at_4", "nmi")
"""Metrics of the accuracy slide; the tables hold every metric of METRIC_NAMES."""


def protocol_note(res) -> str:
    """Which protocol the grid's metrics follow, e.g. 'class-disjoint: leave-one-out among unseen classes'."""
    names = res.runs.table["eval_protocol"].dropna().unique() if "eval_protocol" in res.runs.table else ["stratified"]
    return "; ".join(metrics.PROTOCOL_NOTES.get(n, n) for n in sorted(names)) or metrics.PROTOCOL_NOTES["stratified"]


def _verdict(row) -> str:
    if not np.isfinite(row["p_ttest"]):
        return "not testable (one pair)" if row["n_pairs"] < 2 else "no difference"
    if row["p_ttest"] >= 0.05:
        return "no significant difference"
    return f"{row['b'] if row['diff'] > 0 else row['a']} better"


def _paired_sentence(res, name: str, metric: str) -> str:
    p = res.paired
    rows = p[(p["comparison"] == name) & (p["metric"] == metric) & (p["stratum"] == "all")] if not p.empty else p
    if rows.empty:
        return f"{name}: not in this grid"
    if rows["n_pairs"].max() == 0:
        return f"{name}: not answered (no two runs differ only in it)"
    said = []
    for _, r in rows[rows["n_pairs"] > 0].sort_values("n_pairs", ascending=False).head(3).iterrows():
        which = f"{r['a']} vs {r['b']}" if len(rows) > 1 else name
        if r["identical"]:
            said.append(f"{which}: identical runs (the miner keeps every tuple the loss uses; it changes nothing)")
            continue
        said.append(f"{which}: {_verdict(r)} (Δ{METRIC_LABELS[metric]} = {tables.fmt_ci(r['diff'], r['diff_ci'])}, "
                    f"{tables.p_text(r['p_ttest'])}, {r['n_pairs']} matched pairs)")
    return "; ".join(said)


def accuracy_slide(res, metric: str) -> Slide:
    c = res.configs
    runs = c[c["kind"] == "run"].sort_values(f"{metric}_mean", ascending=False).head(TOP_ROWS)
    base = c[c["kind"] == "baseline"]
    if not base.empty:
        base = base.loc[base.groupby("loss.name")[f"{metric}_mean"].idxmax()].sort_values(f"{metric}_mean", ascending=False)
    shown = pd.concat([runs, base], ignore_index=True)
    shown_metrics = tuple(dict.fromkeys((*SLIDE_METRICS, metric)))  # all of them: tables/accuracy.*
    disp = tables.display_table(shown, metrics=shown_metrics)
    grey = list(range(len(runs), len(shown)))
    best, answer = runs.iloc[0], ""
    answer = f"Best: {best['config']} ({METRIC_LABELS[metric]} {tables.fmt_ci(best[f'{metric}_mean'], best[f'{metric}_ci'])})"
    if not base.empty:
        b = base.iloc[0]
        answer += f"; best baseline: {b['config']} ({b[f'{metric}_mean']:.3f})"
    n_more = (c["kind"] == "run").sum() - len(runs)
    return Slide("Accuracy per configuration (mean ± 95% CI over seeds)", "table_accuracy",
                 lambda fig: table_figure(fig, disp, fontsize=15, grey_rows=grey, bold_rows=[0]), answer,
                 notes=f"{n_more} more configurations and all baselines in tables/accuracy.(csv|md|tex). "
                       f"Grey rows: baselines on the same queries and protocol (best dim per method). {protocol_note(res)}.")


def paired_slide(res, metric: str) -> Slide:
    p = res.paired
    overall = p[p["stratum"] == "all"] if not p.empty else p
    comps = [n for n in tables.COMPARISONS if not overall.empty and n in set(overall["comparison"])]

    def draw(fig):
        top, bottom = fig.subfigures(2, 1, height_ratios=[1.0, 1.6])
        if not overall.empty:
            table_figure(top, tables.display_paired(overall).drop(columns=["stratum"]), fontsize=12)
        axes = bottom.subplots(1, max(1, len(comps)), squeeze=False)[0]
        for ax, name in zip(axes, comps):
            factor, a, b, free = tables.COMPARISONS[name]
            pairs = tables.matched_pairs(res.runs, factor, a, b, free, metric)
            if pairs.empty:
                ax.text(0.5, 0.5, f"{name}: no two runs differ only in it", ha="center", transform=ax.transAxes)
                continue
            col = "embedding.dim" if "embedding.dim" in pairs else None
            sc = ax.scatter(pairs[f"{metric}_a"], pairs[f"{metric}_b"], c=np.log2(pairs[col]) if col else None,
                            cmap="viridis", s=40)
            lo, hi = np.nanmin(pairs[[f"{metric}_a", f"{metric}_b"]].values), np.nanmax(pairs[[f"{metric}_a", f"{metric}_b"]].values)
            ax.plot([lo, hi], [lo, hi], "k--", lw=1)
            ax.set_xlabel(f"{a}: {METRIC_LABELS[metric]}")
            ax.set_ylabel(f"{b}: {METRIC_LABELS[metric]}")
            ax.set_title(f"{name} (points above the line: {b} wins)", fontsize="medium")
            if col:
                bar = bottom.colorbar(sc, ax=ax, pad=0.01)
                bar.set_label("log2 dim")
        if not comps:
            axes[0].text(0.5, 0.5, "no matched pairs in this grid", ha="center", transform=axes[0].transAxes)
        bottom.subplots_adjust(bottom=0.2, top=0.9, wspace=0.3, left=0.07, right=0.97)

    answer = "; ".join(_paired_sentence(res, n, metric) for n in tables.COMPARISONS)
    return Slide("Contrastive or triplet? Does mining help? (paired over seeds)", "paired", draw, answer,
                 notes="Pairs: same seed and same settings except the factor. p: paired t-test; per-dim rows in "
                       f"tables/paired. {protocol_note(res)}.")


def sweep_slide(res, metric: str) -> Slide:
    runs = res.configs[res.configs["kind"] == "run"]
    parts = []
    for x, word in (("embedding.dim", "dim"), ("loss.margin", "margin")):
        if is_swept(runs, x):
            best = runs.loc[runs.groupby("loss.name")[f"{metric}_mean"].idxmax()]
            parts.append(f"best {word}: " + ", ".join(f"{short_loss_name(r['loss.name'])} "
                                                       f"{r[x]:g}" for _, r in best.iterrows()))
    if "embedding.dim" in runs and (runs["embedding.dim"] == 2).any() and runs["embedding.dim"].nunique() > 1:
        gap = runs[f"{metric}_mean"].max() - runs.loc[runs["embedding.dim"] == 2, f"{metric}_mean"].max()
        parts.append(f"d=2 costs {gap:.3f} {METRIC_LABELS[metric]}")
    return Slide("Which embedding dimension? Which margin?", "sweeps",
                 lambda fig: sweep_figure(fig, res.configs, res.baselines, metrics=tuple(dict.fromkeys(("knn1", metric)))),
                 "; ".join(parts) or "neither dim nor margin varies in this grid")


def loss_slide(res) -> Slide:
    sel = pick_curve_configs(res.runs)
    hist = {p: load_history(p) for p in sel["path"]}
    parts, falls = [], []
    for label, g in sel[sel["status"] == "completed"].groupby("config_label"):
        losses = [hist[p]["loss"].to_numpy() for p in g["path"] if len(hist[p])]
        n = min(len(x) for x in losses) if losses else 0
        if n >= 4:
            mean = np.nanmean([x[:n] for x in losses], axis=0)
            first, last = np.nanmean(mean[: max(1, n // 10)]), np.nanmean(mean[-max(1, n // 10):])
            falls.append((label, (first - last) / first if first else 0.0))
    if falls:
        flat = [lab for lab, f in falls if f < 0.1]
        parts.append(f"loss falls by ≥10% in {len(falls) - len(flat)} of {len(falls)} configurations"
                     + (f" (flat: {', '.join(flat)})" if flat else ""))
    for mining, g in sel[sel["status"] == "completed"].groupby("mining"):
        act = [h["active_fraction"].to_numpy() for p, h in hist.items() if p in set(g["path"]) and "active_fraction" in h]
        if act:
            n = min(len(a) for a in act)
            first, last = np.nanmean([a[: max(1, n // 20)].mean() for a in act]), np.nanmean([a[-max(1, n // 20):].mean() for a in act])
            parts.append(f"{'mined' if mining == 'mined' else 'no miner'}: active fraction {first:.2f} → {last:.2f}")
    return Slide("Loss evolution and loss-independent diagnostics", "loss",
                 lambda fig: loss_figure(fig, res.runs, histories=hist),
                 "; ".join(parts))


def projection_slide(res, method: str, label: str, name: str, with_dim2: bool, max_points: int = 2000) -> Slide:
    best = res.chosen["best"]
    names = class_names_of(best["path"])
    extra = None
    if with_dim2 and "dim2" in res.projections:
        extra = {"title": "d=2 run, no projection", "proj": res.projections["dim2"]}
    epochs = load_history(best["path"], "epochs")
    answer = f"{best['config_label']} (seed {best['seed']})"
    if "knn1" in epochs and len(epochs) > 1:
        answer += f": kNN-1 {epochs['knn1'].iloc[0]:.2f} at epoch 0 → {epochs['knn1'].iloc[-1]:.2f} at the end"
    if extra:
        answer += f"; right: {res.chosen['dim2']['config_label']} plotted directly"
    if method in res.projections and res.projections[method]:
        shown = sum(len(lab) for _, lab in next(iter(res.projections[method].values())).values())
        answer += f"; {shown} points per map (cap {max_points}, sampled per class)"
    if method not in res.projections:
        return Slide(f"Do classes group? {label}", name, None, answer, bullets=[f"{label} not computed (left out with --no-umap, or not installed)"])
    return Slide(f"Do classes group? {label}: epoch 0 vs final, train | test", name,
                 lambda fig: embedding_figure(fig, res.projections[method], names, label, extra), answer)


def hierarchy_slide(res) -> Slide:
    h, pix = res.details["hierarchy_best"], res.details.get("hierarchy_pixels")
    best = res.chosen["best"]
    if h["parents"]:
        answer = (f"Known hierarchy: agreement r = {h['hierarchy_r']:.2f} (p = {h['hierarchy_p']:.3f})"
                  + (f" vs raw pixels r = {pix['hierarchy_r']:.2f}" if pix else ""))
        agg = res.hierarchy.groupby("config")["hierarchy_r"].mean().sort_values(ascending=False)
        answer += f"; best configuration {agg.index[0]} (mean r {agg.iloc[0]:.2f})" if len(agg) else ""
    else:
        pairs = ", ".join(f"{a}–{b}" for a, b, _ in closest_pairs(h["means"], h["names"], 4))
        answer = f"No known hierarchy in this data set; closest class means: {pairs} (cophenetic r = {h['cophenetic_r']:.2f})"
    return Slide("Do distances between classes reflect a hierarchy?", "hierarchy",
                 lambda fig: dendrogram_figure(fig, h, f"class means of {best['config_label']} (seed {best['seed']})"),
                 answer, notes="Per-run agreement in tables/hierarchy.(csv|md|tex).")


def retrieval_slide(res, k: int, n_queries: int) -> Slide:
    best = res.chosen["best"]
    final, protocol = read_final(best["path"]), metrics.protocol_of(read_attrs(best["path"]))
    queries = pick_queries(final, n_queries, protocol=protocol)
    q_labels = final[protocol["query"]]["labels"]
    confusions = pd.Series([(int(q_labels[q]), int(neighbours(final, q, 1, protocol=protocol)["labels"][0]))
                            for q in range(len(q_labels))])
    wrong = confusions[[a != b for a, b in confusions]]
    names = class_names_of(best["path"])
    answer = f"Top-1 wrong for {len(wrong)}/{len(confusions)} {protocol['query']} queries"
    if len(wrong):
        (a, b), n = wrong.value_counts().index[0], wrong.value_counts().iloc[0]
        answer += f"; most frequent doppelganger: {names[a]} → {names[b]} ({n}×)"
    where = {"train": "training", "test": "other test"}.get(protocol["gallery"], protocol["gallery"])
    return Slide(f"Retrieval: each query's {k} nearest {where} images", "retrieval",
                 lambda fig: gallery_figure(fig, best["path"], queries, k), answer,
                 notes="Green frame: same class as the query; red: a doppelganger. "
                       "python -m analysis.retrieve RUN_DIR --query I --k K for any query. "
                       f"{metrics.PROTOCOL_NOTES.get(protocol['name'], protocol['name'])}.")


def openset_slide(res) -> Slide:
    o = res.openset
    best = res.chosen["best"]
    detail = res.details["openset"].get(best["run_id"]) or next(iter(res.details["openset"].values()), {})
    label = best["config_label"] if best["run_id"] in res.details["openset"] else o["config"].iloc[0]
    names = {"softmax_acc": "softmax accuracy", "knn1_acc": "kNN-1 accuracy", "auroc_gini": "AUROC (Gini)",
             "auroc_entropy": "AUROC (entropy)", "unknown_rejected": "unknown rejected", "known_kept_acc": "known acc. after rejection"}
    fams = [res.runs.table.loc[res.runs.table["run_id"] == rid, "loss_family"].iloc[0] for rid in o["run_id"]]
    disp = pd.DataFrame({"": list(names.values()),
                         **{f: [f"{v:.3f}" for v in o.iloc[i][list(names)]] for i, f in enumerate(fams)}})

    def draw(fig):
        left, right = fig.subfigures(1, 2, width_ratios=[1.0, 1.1])
        openset_figure(left, detail, label)
        left.subplots_adjust(bottom=0.14, left=0.12, right=0.97, top=0.86)
        table_figure(right, disp, fontsize=16)

    r = o.iloc[0] if not o.empty else None
    answer = ("" if r is None else f"Softmax on frozen embeddings {r['softmax_acc']:.3f} vs kNN-1 {r['knn1_acc']:.3f}; "
              f"a Gini threshold keeping 95% of known samples rejects {r['unknown_rejected']:.0%} of unknown classes "
              f"(AUROC {r['auroc_gini']:.2f})")
    return Slide("Beyond kNN: softmax on frozen embeddings, open-set rejection", "openset", draw, answer,
                 notes="Columns: the best configuration of each loss (" + "; ".join(o["config"]) + "). "
                       + ("Unknowns: the unseen test classes; knowns: held-out training images of the training "
                          "classes (class-disjoint)." if "class_disjoint" in set(res.runs.table.get("eval_protocol", ()))
                          else "30% of the classes are held out of the softmax as 'unknown'. With a stratified split "
                          "the embedding network saw them in training: an optimistic open-set test."))


def summary_slide(res, metric: str, slides: list[Slide]) -> Slide:
    t = res.runs.table
    data = ", ".join(sorted(t["data.name"].astype(str).unique())) if "data.name" in t else "?"
    bullets = [f"{len(t)} runs loaded ({(t['status'] == 'completed').sum()} completed, {(t['status'] == 'stopped').sum()} "
               f"stopped early: in loss curves, not in tables), {len(res.runs.skipped)} files skipped (corrupt or failed, "
               f"listed in tables/skipped.csv); data: {data}; {t['config_id'].nunique()} configurations × "
               f"{t['seed'].nunique()} seeds",
               f"Protocol: {protocol_note(res)}. Metrics recomputed from the stored embeddings ({metrics.source()}) for "
               f"{int(t.get('metrics_recomputed', pd.Series(True, index=t.index)).sum())} of {len(t)} runs (the others as stored); "
               f"largest difference to the stored values "
               f"{np.nanmax(t['metrics_diff'].to_numpy(dtype=float)) if t['metrics_diff'].notna().any() else float('nan'):.1e}"]
    seen = set()
    for s in slides:
        question = s.title.split("?")[0] + "?"
        if s.answer and "?" in s.title and question not in seen:
            seen.add(question)
            bullets.append(f"{question}  {s.answer}")
    bullets += ["TensorBoard (HParams of the whole grid, projector with sprites): "
                "tensorboard --logdir REPORT/tensorboard --host 127.0.0.1"]
    return Slide(f"Deep metric learning on {data}: what the grid answers", "summary", None, "", bullets=bullets)


def search_summary_slide(res, slides: list[Slide]) -> Slide:
    bullets = search.summary_bullets(res.search, res.runs.table, len(res.runs.skipped))
    bullets += [f"{s.title}: {s.answer}" for s in slides[:4] if s.answer]
    bullets.append(f"Protocol of the test metrics: {protocol_note(res)}.")
    return Slide(f"Hyperparameter search {res.search.name}: what it found", "summary", None, "", bullets=bullets)


def make_search_slides(res, opts) -> list[Slide]:
    """The search deck: trials, metric vs hyperparameters, ASHA, the chosen trial on test, curves, projections, retrieval."""
    t, s = res.runs.table, res.search
    max_epochs = int(t["train.epochs"].max()) if "train.epochs" in t else int(s.table["epochs"].max())
    body = [search.trials_slide(s), search.hyperparameter_slide(s), search.asha_slide(s, max_epochs),
            search.best_test_slide(s, t), loss_slide(res),
            projection_slide(res, "tsne", "t-SNE", "tsne", "umap" not in res.projections, opts.max_points),
            projection_slide(res, "umap", "UMAP", "umap", "umap" in res.projections, opts.max_points),
            retrieval_slide(res, opts.k, opts.n_queries)]
    return [search_summary_slide(res, body)] + body


def make_slides(res, opts) -> list[Slide]:
    if res.search is not None:
        return make_search_slides(res, opts)
    metric = opts.metric
    body = [accuracy_slide(res, metric), paired_slide(res, metric), sweep_slide(res, metric), loss_slide(res),
            projection_slide(res, "tsne", "t-SNE", "tsne", "umap" not in res.projections, opts.max_points),
            projection_slide(res, "umap", "UMAP", "umap", "umap" in res.projections, opts.max_points),
            hierarchy_slide(res), retrieval_slide(res, opts.k, opts.n_queries), openset_slide(res)]
    return [summary_slide(res, metric, body)] + body
