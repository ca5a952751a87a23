"""Read back an offline W&B run (``WANDB_MODE=offline``) from what wandb itself writes, without a server.

wandb 0.31 writes each run as ``<dir>/wandb/offline-run-<time>-<id>/``: the transaction log
``run-<id>.wandb`` (every record the SDK sent: run, config, metric definitions, history rows, summary updates,
files, artifacts, exit) and ``files/`` (media such as ``files/media/images/...png``, saved files). The SDK no
longer ships a Python reader for the transaction log (``wandb.sdk.internal.datastore`` is gone since the Go
core took over; ``wandb sync`` needs the server and ``wandb beta leet`` is an interactive terminal UI), so the
framing is read here: the LevelDB log format the datastore has always used (a 7-byte file header
``:W&B`` + key 0xBEE1 + version 0; 32 KiB blocks; records of crc32c(4) length(2, LE) type(1) + payload, type 1
FULL / 2 FIRST / 3 MIDDLE / 4 LAST), and each payload is parsed with wandb's own protobuf
``wandb.proto.wandb_internal_pb2.Record``. Checksums are not verified (no crc32c in the standard library).
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["OfflineRun", "find_offline_runs", "offline_env", "read_offline_run", "read_offline_runs"]

_HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
_BLOCK = 32768


@dataclass
class OfflineRun:
    """What an offline run's files say."""

    folder: Path
    run_id: str = ""
    name: str = ""
    project: str = ""
    group: str = ""
    job_type: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)  # define_metric records (name/glob, step_metric)
    history: list[dict[str, Any]] = field(default_factory=list)  # rows: flat keys ("a/b/c" for nested), + _step
    summary: dict[str, Any] = field(default_factory=dict)  # summary updates folded in order (top-level keys)
    files: list[str] = field(default_factory=list)  # paths named by "files" records
    artifacts: list[dict[str, Any]] = field(default_factory=list)  # name, type, aliases, metadata, entries
    exited: bool = False
    exit_code: int | None = None  # the exit record's code (``run.finish(exit_code=...)``)

    def rows_with(self, key: str) -> list[dict[str, Any]]:
        return [row for row in self.history if key in row]


def _payloads(data: bytes) -> list[bytes]:
    if data[:7] != _HEADER:
        raise ValueError(f"not a W&B transaction log (header {data[:7]!r})")
    out: list[bytes] = []
    pos, partial = 7, b""
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # block trailer: zero padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:  # zero padding up to the block end
            pos += left
            continue
        payload = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            out.append(payload)
        elif kind == 2:
            partial = payload
        elif kind == 3:
            partial += payload
        elif kind == 4:
            out.append(partial + payload)
            partial = b""
        else:
            raise ValueError(f"unknown record type {kind} at byte {pos}")
    return out


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def _set_nested(target: dict[str, Any], path: list[str], value: Any) -> None:
    for part in path[:-1]:
        target = target.setdefault(part, {})
    target[path[-1]] = value


def read_offline_run(folder: str | Path) -> OfflineRun:
    """Parse ``folder`` (an ``offline-run-*`` directory) into an :class:`OfflineRun`."""
    from wandb.proto import wandb_internal_pb2 as pb

    folder = Path(folder)
    (log,) = folder.glob("run-*.wandb")
    run = OfflineRun(folder)
    for payload in _payloads(log.read_bytes()):
        record = pb.Record()  # type: ignore[attr-defined]
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.run_id, run.name, run.project = r.run_id, r.display_name, r.project
            run.group, run.job_type = r.run_group, r.job_type
            for item in r.config.update:
                run.config[_key(item)] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                run.config[_key(item)] = json.loads(item.value_json)
        elif kind == "metric":
            m = record.metric
            run.metrics.append({"name": m.name, "glob_name": m.glob_name, "step_metric": m.step_metric,
                                "hidden": m.options.hidden})
        elif kind == "history":
            row = {_key(item): json.loads(item.value_json) for item in record.history.item}
            run.history.append(row)
        elif kind == "summary":
            for item in record.summary.update:
                path = list(item.nested_key) or [item.key]
                _set_nested(run.summary, path, json.loads(item.value_json))
            for item in record.summary.remove:
                run.summary.pop(item.key or item.nested_key[0], None)
        elif kind == "files":
            run.files += [f.path for f in record.files.files]
        elif kind == "artifact":
            a = record.artifact
            run.artifacts.append({
                "name": a.name, "type": a.type, "aliases": list(a.aliases),
                "metadata": json.loads(a.metadata) if a.metadata else {},
                "entries": [e.path for e in a.manifest.contents]})
        elif kind == "exit":
            run.exited = True
            run.exit_code = int(record.exit.exit_code)
    return run


def find_offline_runs(wandb_dir: str | Path) -> list[Path]:
    """The ``offline-run-*`` folders under ``wandb_dir/wandb`` (oldest first)."""
    return sorted((Path(wandb_dir) / "wandb").glob("offline-run-*"))


def offline_env(root: Path) -> dict[str, str]:
    """Environment for offline W&B confined to ``root``: no network, no user settings or credentials read
    (HOME, config and cache under ``root``; the variables that would pick a server or a run are cleared)."""
    home = root / "home"
    home.mkdir(parents=True, exist_ok=True)
    return {"HOME": str(home), "WANDB_MODE": "offline", "WANDB_DIR": str(root),
            "WANDB_CONFIG_DIR": str(home / ".config"), "WANDB_CACHE_DIR": str(home / ".cache"),
            "WANDB_DATA_DIR": str(home / ".data"), "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true"}


#: variables that would send runs to a server or into a given run: removed for the tests
CLEARED = ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_ID", "WANDB_RESUME",
           "WANDB_RUN_GROUP", "WANDB_SERVICE")


def read_offline_runs(wandb_dir: str | Path) -> list[OfflineRun]:
    """Every offline run under ``wandb_dir``, read once this process's W&B service has shut down
    (``wandb.teardown()``): the service writes the transaction log in the background, and ``finish()`` may
    return before the last records are on disk."""
    import wandb

    wandb.teardown()
    return [read_offline_run(folder) for folder in find_offline_runs(wandb_dir)]
