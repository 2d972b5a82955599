"""Work the report hands to a second process: on 2 cores, its single-threaded parts need not queue.

A Worker is one process (spawned: a fresh interpreter) that runs the calls it is given in order, so what one call
leaves behind (numba's compiled UMAP) serves the next. The report starts it before it reads a
run: the worker imports and compiles UMAP (~20 s) while the report loads the results, then fits
the best run's UMAP maps and writes TensorBoard while the report fits t-SNE on the other core.
"""

from __future__ import annotations

import multiprocessing
import signal
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Callable, Optional

from analysis.embeddings import cores, is_projected, project_run
from analysis.tensorboard import write_tensorboard


def timed_call(fn, *args) -> tuple[float, float]:
    """(wall, CPU) seconds of fn(*args) in the process that calls it."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn(*args)
    return round(time.perf_counter() - t0, 2), round(time.process_time() - c0, 2)


def _serve(conn) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop(): unwind, so imports' semaphores are released
    while True:
        try:
            fn, args = conn.recv()
        except EOFError:  # the report closed its end: done
            return
        try:
            conn.send((True, fn(*args)))
        except Exception as exc:  # handed to the report, which raises it where it asks for the result
            try:
                conn.send((False, exc))
            except Exception:  # an error that does not pickle: its traceback's text
                conn.send((False, RuntimeError(traceback.format_exc())))


class Worker:
    """A process running calls in order; result(i) waits for the i-th call's value (or raises its error)."""

    def __init__(self):
        ctx = multiprocessing.get_context("spawn")  # a fork of a process that has run OpenMP hangs in OpenMP
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child,), daemon=True)  # never outlives the report
        self._proc.start()
        child.close()
        self._sent, self._results = 0, []

    @staticmethod
    def possible() -> bool:
        """Whether there is a second core to run on."""
        return cores() > 1

    def submit(self, fn, *args) -> int:
        self._conn.send((fn, args))
        self._sent += 1
        return self._sent - 1

    def _receive(self) -> None:
        try:
            self._results.append(self._conn.recv())
        except EOFError:
            raise RuntimeError(f"the report's background process ended (exit code {self._proc.exitcode})") from None

    def busy(self) -> bool:
        """Whether a call is still running (it holds a core)."""
        while len(self._results) < self._sent and self._conn.poll():
            self._receive()
        return len(self._results) < self._sent

    def result(self, i: int):
        while len(self._results) <= i:
            self._receive()
        ok, value = self._results[i]
        if not ok:
            raise value
        return value

    def stop(self) -> None:
        """End the process now (the report stops it once it has every result it asked for, or before
        asking for any: a warm-up only computes)."""
        self._conn.close()
        self._proc.terminate()
        self._proc.join(10)
        if self._proc.is_alive():  # stuck where SIGTERM's handler cannot run (inside compiled code)
            self._proc.kill()
            self._proc.join()


def project_and_log(res, opts, out: Path, worker: Optional[Worker]) -> tuple[dict, Callable[[], tuple]]:
    """res.projections, and a callable giving TensorBoard's (wall, CPU) seconds once REPORT/tensorboard is written.

    With a worker, and the best run's UMAP not cached yet, the worker fits it and then writes
    TensorBoard while this process fits t-SNE on the cores left; otherwise all of it here (the
    worker is stopped: a warm report has nothing to fit).
    """
    best = res.chosen["best"]["path"]
    if worker is not None and is_projected(best, "umap", opts.max_points, cache_dir=res.cache_dir):
        worker.stop()
        worker = None
    elsewhere, log = {}, None
    if worker is not None:
        job = worker.submit(project_run, best, "umap", None, opts.max_points, 0, res.cache_dir, 1)
        elsewhere["umap"] = lambda: worker.result(job)
        if opts.tensorboard:
            logged = worker.submit(timed_call, write_tensorboard, res.runs, out / "tensorboard", projector_picks(res.chosen))
            log = lambda: worker.result(logged)
    projections = project_chosen(res.chosen, opts, res.cache_dir, elsewhere, worker.busy if worker else lambda: False)
    if log is None and opts.tensorboard:
        times = timed_call(write_tensorboard, res.runs, out / "tensorboard", projector_picks(res.chosen))
        log = lambda: times
    return projections, log


def project_chosen(chosen: dict, opts, cache_dir: Path, elsewhere: Optional[dict] = None,
                   core_taken: Callable[[], bool] = lambda: False) -> dict:
    """method -> projection of the best run (epoch 0 and final); 'dim2' -> the d=2 run as it is.

    Projections are cached in cache_dir (per run_id, epoch, method, point cap): a second
    report over the same results draws them without fitting t-SNE or UMAP again. elsewhere:
    method -> a callable giving that projection, fitted in another process; t-SNE runs here on
    the cores core_taken() leaves.
    """
    elsewhere = elsewhere or {}
    out = dict.fromkeys(opts.methods)
    for method in sorted(opts.methods, key=lambda m: m in elsewhere):  # this process's own first
        try:
            out[method] = elsewhere[method]() if method in elsewhere else project_run(
                chosen["best"]["path"], method, max_points=opts.max_points, cache_dir=cache_dir,
                threads=max(1, cores() - core_taken()))
        except ImportError as exc:  # umap-learn is an optional extra
            del out[method]
            warnings.warn(f"{method} projection skipped: {exc}")
    if "dim2" in chosen:
        out["dim2"] = project_run(chosen["dim2"]["path"], "tsne", max_points=opts.max_points, cache_dir=cache_dir)
    return out


def projector_picks(chosen: dict) -> dict:
    """Projector entries: one per chosen run, named by its first role."""
    picks = {}
    for role, row in chosen.items():
        if row["path"] not in picks.values():
            picks[f"{role} {row['config_label']}"] = row["path"]
    return picks
