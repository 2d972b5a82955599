"""Analysis of run.h5 results: tables, curves, embeddings and slides (python -m analysis.report), a
terminal table (python -m analysis.table) and `load_results`, one DataFrame row per run."""

from analysis.results import load_results

__all__ = ["load_results"]
