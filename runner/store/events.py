"""TensorBoard event files written synchronously: one file, one record per event, no writer thread.

torch's SummaryWriter queues every scalar for a writer thread (10 slots) that frames it with a
pure-Python CRC; a run's per-step scalars, or a report's 1,000 HParams sessions, then spend most
of their time waiting on that queue. EventFile writes the same format in the caller's thread.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
import time
from pathlib import Path

try:
    from google_crc32c import value as _crc32c
except ImportError:  # a C CRC-32C is an install dependency; TensorBoard's (pure Python) is 20x slower
    _crc32c = None


def masked_crc32c(data: bytes) -> int:
    """The TFRecord checksum: CRC-32C of data, rotated right by 15 bits plus 0xA282EAD8 (mod 2^32)."""
    if _crc32c is None:
        # TensorBoard's pure-Python CRC, only where google-crc32c is missing (tensorboard imports in ~1 s)
        from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as slow
        return slow(data)
    x = _crc32c(data)
    return (((x >> 15) | (x << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class EventFile:
    """One TensorBoard event file in `folder`, each event framed and written as it is added.

    The file and record format are TensorBoard's own (tensorboard.summary.writer: the
    "brain.Event:2" header event, then one TFRecord per Event: length, its masked CRC-32C,
    the bytes, theirs), without its writer thread. The CRC is google-crc32c's (C); TensorBoard's
    own, pure Python, where that is not installed. TensorBoard's reader checks every CRC.
    """

    _uid = itertools.count()
    _headers: dict[int, bytes] = {}
    """Record length -> its 8 bytes and their masked CRC (shared: lengths repeat across files)."""

    def __init__(self, folder: Path):
        # tensorboard (and its protobuf) costs about a second to import: only when logs are written
        from tensorboard.compat.proto import event_pb2, summary_pb2
        self._event, self._summary = event_pb2.Event, summary_pb2.Summary
        folder.mkdir(parents=True, exist_ok=True)
        # TensorBoard reads every file with "tfevents" in its name; the suffix keeps a SummaryWriter opened
        # on the same folder in the same second (its own counter also starts at 0) from taking this name
        name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}."
                f"{next(self._uid)}.scalars")
        self._file = open(folder / name, "wb")
        self._write(self._event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, event) -> None:
        data = event.SerializeToString()
        header = self._headers.get(len(data))
        if header is None:
            length = struct.pack("<Q", len(data))
            header = self._headers[len(data)] = length + struct.pack("<I", masked_crc32c(length))
        self._file.write(header + data + struct.pack("<I", masked_crc32c(data)))

    def summary(self, summary, step: int = 0) -> None:
        self._write(self._event(wall_time=time.time(), step=step, summary=summary))

    def scalars(self, values: dict, step: int = 0) -> None:
        """Several scalars at one step, in one event (TensorBoard shows each tag as its own curve); none: nothing."""
        if values:
            self.summary(self._summary(value=[self._summary.Value(tag=t, simple_value=float(v))
                                        for t, v in values.items()]), int(step))

    def flush(self) -> None:
        """Hand what is written to the OS (a live TensorBoard then reads it)."""
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "EventFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
