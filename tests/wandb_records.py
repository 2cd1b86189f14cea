"""Read back the records of an offline W&B run (``run-<id>.wandb``) for tests.

wandb no longer ships a Python reader for its transaction log, so this decodes the documented
container (a LevelDB-style log: a 7-byte ``:W&B`` header, 32 KiB blocks of chunks with a 7-byte
header: crc32, little-endian length, type FULL/FIRST/MIDDLE/LAST) and parses each record with
wandb's own protobuf ``Record`` message.
"""
from __future__ import annotations

import json
import struct
import time
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def raw_records(path: Path):
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B transaction log")
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < HEADER:
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos: pos + HEADER])
        chunk = data[pos + HEADER: pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:  # zero padding at the end of a block
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0
            continue
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""


def records(path: Path, wait_s: float = 20.0) -> list:
    """Every ``Record`` of a .wandb file. ``run.finish()`` may return before W&B's writer has flushed
    the file's last block: wait (up to ``wait_s``) for the run's exit record, then read what is there."""
    deadline = time.monotonic() + wait_s
    while True:
        out = []
        for blob in raw_records(path):
            record = pb.Record()
            record.ParseFromString(blob)
            out.append(record)
        if any(r.WhichOneof("record_type") == "exit" for r in out) or time.monotonic() > deadline:
            return out
        time.sleep(0.1)


def read_run(path: Path) -> dict:
    """{'run': Record.run, 'config': {...}, 'history': [dict], 'summary': {...}, 'metrics': {name: MetricRecord}}
    from a .wandb file (``metrics``: the ``define_metric`` declarations)."""
    out = {"run": None, "config": {}, "history": [], "summary": {}, "metrics": {}}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["run"] = record.run
            out["config"].update(_items(record.run.config.update))
        elif kind == "config":
            out["config"].update(_items(record.config.update))
        elif kind == "history":
            out["history"].append(_items(record.history.item))
        elif kind == "summary":
            out["summary"].update(_items(record.summary.update))
        elif kind == "metric":
            out["metrics"][record.metric.name or record.metric.glob_name] = record.metric
    return out


def _items(items) -> dict:
    return {(it.key or "/".join(it.nested_key)): json.loads(it.value_json) for it in items}
