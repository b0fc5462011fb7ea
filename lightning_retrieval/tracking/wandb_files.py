"""Read a Weights & Biases run file (``run-*.wandb``) back without a server: config, history, summary.

The file is W&B's transaction log: a 7-byte header, then 32 KiB blocks of records, each record a
(checksum, length, type) header followed by a serialized ``wandb.proto`` ``Record``; records that do not fit
in a block are split into FIRST/MIDDLE/LAST chunks. This is what ``wandb sync`` uploads, so reading it is
how tests (and offline users) check what a run logged.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

_BLOCK = 32768
_HEADER = struct.Struct("<4sHB")
_RECORD = struct.Struct("<IHB")
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(path: Path):
    data = Path(path).read_bytes()
    ident, _magic, _version = _HEADER.unpack_from(data, 0)
    if ident != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    pos, pending = _HEADER.size, b""
    while pos + _RECORD.size <= len(data):
        room = _BLOCK - pos % _BLOCK
        if room < _RECORD.size:  # block tail padding
            pos += room
            continue
        _checksum, length, kind = _RECORD.unpack_from(data, pos)
        pos += _RECORD.size
        if kind == 0 and length == 0:  # zero padding at the end of the file
            break
        chunk = data[pos : pos + length]
        pos += length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk
            pending = b""


def read_run(run_dir: str | Path) -> dict:
    """``{"run": {name, group, tags, ...}, "config": {...}, "history": [{...}, ...], "summary": {...}}``."""
    from wandb.proto import wandb_internal_pb2 as pb

    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("run-*.wandb")) if run_dir.is_dir() else [run_dir]
    if not files:
        raise FileNotFoundError(f"no run-*.wandb file in {run_dir}")
    config, history, summary, run = {}, [], {}, {}

    def key_of(item) -> str:
        return item.key or "/".join(item.nested_key)

    for raw in _records(files[0]):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            for item in record.run.config.update:
                config[key_of(item)] = json.loads(item.value_json)
            run = {
                "name": record.run.display_name,
                "group": record.run.run_group,
                "tags": list(record.run.tags),
                "project": record.run.project,
                "id": record.run.run_id,
            }
        elif kind == "config":
            for item in record.config.update:
                config[key_of(item)] = json.loads(item.value_json)
        elif kind == "history":
            history.append({key_of(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                summary[key_of(item)] = json.loads(item.value_json)
    return {"run": run, "config": config, "history": history, "summary": summary}
