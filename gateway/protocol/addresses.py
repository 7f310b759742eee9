"""The address file: where ``kairos-servers`` tells the gateway which instances it started.

Written by ``kairos-servers`` to ``servers.address_file`` (relative paths are relative to the
working directory), read by the gateway and by tests. Format (JSON)::

    {"model": "rm2", "pid": 1234,
     "instances": [{"index": 0, "name": "g4dn.xlarge-0", "type": "g4dn.xlarge", "model": "rm2",
                    "http": "http://127.0.0.1:9100", "grpc": "127.0.0.1:9300", "pid": 1234}, ...]}

``instances`` is in pool order (the order of ``Config.instance_types()``). ``pid`` is the
process that serves the instance (a worker when ``--workers`` > 1); the top-level ``pid`` is
the launcher's. The file is replaced atomically, so a reader never sees half of it.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from gateway.errors import ConfigError
from gateway.jsonfile import read_json_file


@dataclass(frozen=True, slots=True)
class InstanceAddress:
    index: int
    name: str
    type: str
    model: str
    http: str  # base URL, e.g. http://127.0.0.1:9100
    grpc: str  # host:port, e.g. 127.0.0.1:9300
    pid: int = 0


@dataclass(frozen=True, slots=True)
class AddressList:
    model: str  # the models served, comma-separated; each instance names its own
    pid: int
    instances: tuple[InstanceAddress, ...]


def write_address_file(path: str | Path, addresses: AddressList) -> None:
    """Write atomically (temp file + rename), creating the parent directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    doc = {
        "model": addresses.model,
        "pid": addresses.pid,
        "instances": [asdict(a) for a in addresses.instances],
    }
    tmp.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    os.replace(tmp, path)


def read_address_file(path: str | Path) -> AddressList:
    """Read an address file; ConfigError naming the file and the problem if it is wrong."""
    path = Path(path)
    doc = read_json_file(path, "address file (is kairos-servers running?)")
    try:
        instances = tuple(
            InstanceAddress(
                index=int(a["index"]),
                name=str(a["name"]),
                type=str(a["type"]),
                model=str(a["model"]),
                http=str(a["http"]),
                grpc=str(a["grpc"]),
                pid=int(a.get("pid", 0)),
            )
            for a in doc["instances"]
        )
        return AddressList(model=str(doc["model"]), pid=int(doc.get("pid", 0)), instances=instances)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: not an address file written by kairos-servers ({exc!r})") from None


def remove_address_file(path: str | Path, pid: int) -> None:
    """Remove the file on the way out, if it is still the one ``pid`` wrote (a gateway started later
    must not read a dead pool's addresses)."""
    try:
        if read_address_file(path).pid == pid:
            Path(path).unlink()
    except (OSError, ConfigError):
        pass  # gone, replaced or unreadable: not ours to remove


def writer_alive(addresses: AddressList) -> bool:
    """Whether the process that wrote the file still runs (on this host; a pid of 0 is unknown: alive)."""
    if addresses.pid <= 0:
        return True
    try:
        os.kill(addresses.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
