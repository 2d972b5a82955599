"""Work the report hands to a second process: on 2 cores, its single-threaded parts need not queue."""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import Future, ProcessPoolExecutor

from analysis.embeddings import cores


def timed_call(fn, *args) -> tuple[float, float]:
    """(wall, CPU) seconds of fn(*args) in the process that calls it."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn(*args)
    return round(time.perf_counter() - t0, 2), round(time.process_time() - c0, 2)


def in_background(fn, *args) -> Future:
    """fn(*args) started in a forked process where this one has a second core, else called now.

    The report runs TensorBoard's many small writes (single-threaded: 13 s over 1,000 runs) this
    way while it fits UMAP, also single-threaded, on the other core. The Future's result() waits
    and raises what fn raised; done() says whether the core is free again.
    """
    if cores() < 2 or "fork" not in multiprocessing.get_all_start_methods():
        future = Future()
        try:
            future.set_result(fn(*args))
        except Exception as exc:  # handed over as a forked fn's would be: on result()
            future.set_exception(exc)
        return future
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"))
    future = pool.submit(fn, *args)
    pool.shutdown(wait=False)  # the worker exits once fn returns
    return future
