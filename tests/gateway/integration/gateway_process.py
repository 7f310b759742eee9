"""Start real ``kairos-gateway`` processes on loopback in front of real ``kairos-servers`` pools,
and talk V2 to them with a small asynchronous client."""

from __future__ import annotations

import contextlib
import json
import re
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from helpers.inputs import json_body
from helpers.pool import RunningPool

from benchmarks.processes import GatewayProcess, ServersProcess, console_script, start_gateway, start_servers

READY = re.compile(r"^kairos-gateway ready http=(\S+) grpc=(\S+)")


RunningGateway = GatewayProcess


def gateway_command() -> list[str]:
    return console_script("kairos-gateway", "gateway.cli")


def gateway_config(pool_config: Path, directory: Path, qos_ms: float | None = None, **gateway: Any) -> Path:
    """The pool's config with a gateway section for tests: free ports, fast probes."""
    doc = json.loads(pool_config.read_text())
    if qos_ms is not None:
        doc["qos_ms"] = qos_ms
    doc["gateway"] = {"http_port": 0, "grpc_port": 0, "probe_interval_s": 0.2, **gateway}
    path = directory / "gateway-config.json"
    path.write_text(json.dumps(doc))
    return path


def launch_gateway(config: Path, args: Sequence[str], directory: Path, timeout_s: float = 30.0) -> RunningGateway:
    return start_gateway(config, args, directory, timeout_s)


def instance_flags(*pools: RunningPool) -> list[str]:
    """``--instance TYPE=http://...,grpc://...`` for every instance of ``pools``."""
    return [
        arg
        for pool in pools
        for inst in pool.instances
        for arg in ("--instance", f"{inst.type}={inst.http},grpc://{inst.grpc}")
    ]




def json_request(batch: int, request_id: str = "", *, model: str = "rm2", **parameters: Any) -> bytes:
    """A valid JSON infer body for ``model`` (its real inputs: ``helpers.inputs``)."""
    doc: dict[str, Any] = {}
    if request_id:
        doc["id"] = request_id
    if parameters:
        doc["parameters"] = parameters
    return json_body(model, batch, **doc)


async def post_infer(
    session: aiohttp.ClientSession, url: str, model: str, body: bytes
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """POST one infer; (status, JSON body, headers)."""
    async with session.post(f"{url}/v2/models/{model}/infer", data=body,
                            headers={"Content-Type": "application/json"}) as resp:
        raw = await resp.read()
        return resp.status, orjson.loads(raw) if raw else {}, dict(resp.headers)


@contextlib.contextmanager
def servers_and_gateway(directory: Path, config: dict[str, Any]) -> Iterator[tuple[ServersProcess, RunningGateway]]:
    """``kairos-servers`` and ``kairos-gateway`` started from one config document (written to
    ``directory`` with its own address file); both stopped on exit, the gateway checked to exit 0."""
    address_file = directory / "instances.json"
    path = directory / "config.json"
    path.write_text(json.dumps({**config, "servers": {**config.get("servers", {}), "address_file": str(address_file)}}))
    servers = start_servers(path, address_file)
    try:
        gateway = launch_gateway(path, [], directory)
        yield servers, gateway
        assert gateway.stop(signal.SIGTERM) == 0
    finally:
        servers.stop()
