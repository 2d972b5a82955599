"""Results on disk: the run directory, its lock and atomic files (files), run.h5 (run_file),
the catalog of finished runs (catalog) and the submission records (submissions)."""

from runner.store.files import (MIN_FREE_BYTES, RunLocked, atomic_path, atomic_write, check_writable, file_stamp,
                                fsync_replace, is_locked, remove_stale_temporaries, run_dir, run_lock, run_path)
from runner.store.events import EventFile
from runner.store.catalog import index_run, refresh as refresh_catalog
from runner.store.run_file import (EPOCH_TIMING_KEYS, FORMAT_VERSION, METRIC_NAMES, REQUIRED, STEP_KEYS, CorruptRun,
                                   RunRecord, epoch_group, has_final, read_attrs, read_data_info, read_epoch,
                                   read_final, read_history, read_overview, read_run, run_status, run_summary,
                                   stored_epochs, write_run)

__all__ = ["EPOCH_TIMING_KEYS", "FORMAT_VERSION", "METRIC_NAMES", "MIN_FREE_BYTES", "REQUIRED", "STEP_KEYS",
           "CorruptRun", "EventFile", "RunLocked", "RunRecord", "atomic_path", "atomic_write", "check_writable", "epoch_group",
           "file_stamp", "fsync_replace", "has_final", "index_run", "is_locked", "read_attrs", "read_data_info", "read_epoch",
           "read_final", "read_history", "read_overview", "read_run", "refresh_catalog", "remove_stale_temporaries", "run_dir", "run_lock", "run_path",
           "run_status", "run_summary", "stored_epochs", "write_run"]
