"""``kairos-gateway``: the live gateway in front of a V2 pool.

Prints one ready line once both front ends listen (ports resolved when 0 was asked for):

    kairos-gateway ready http=127.0.0.1:8000 grpc=127.0.0.1:8001 policy=kairos model=rm2 instances=14 healthy=14 admin=127.0.0.1:8002

(``admin=`` only when the config serves the pool admin API, ``gateway.admin_port``.) As the
endpoint picker for Envoy (``--mode epp``, gateway/epp/):

    kairos-gateway ready epp=127.0.0.1:9002 metrics=127.0.0.1:8000 policy=kairos model=rm2 instances=14 healthy=14

Instances from kairos-servers' address file: it waits for the file (``--wait-for-addresses``) and
refuses one whose writer has exited. Usage and config errors print one line and exit 2; a port it
cannot listen on exits 1. SIGTERM/SIGINT stop accepting, answer every query in flight, and exit 0.
"""

from __future__ import annotations

from gateway.grpc_runtime import apply_defaults

apply_defaults()  # this entry point's process setting, before anything imports grpc

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from gateway.app import Gateway, GatewaySettings
from gateway.config import (
    GRPC_SERVERS,
    MAX_DEPTH,
    MAX_PENDING,
    MODES,
    Config,
    Endpoint,
    ModelConfig,
    client_margin,
    load_config,
)
from gateway.errors import ConfigError, ListenError, PoolNotFound, RuntimeFailure
from gateway.gc_freeze import freeze_startup_objects
from gateway.policies import POLICY_NAMES
from gateway.pool import load_address_file, parse_instance_flags
from gateway.protocol.addresses import read_address_file, writer_alive
from gateway.threads import keep_helper_threads_demoted

PROG = "kairos-gateway"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description="SLO-aware V2 gateway for a heterogeneous inference pool")
    p.add_argument("--config", default="config.json", help="config file (default: config.json)")
    p.add_argument("--policy", choices=POLICY_NAMES, help="distribution policy (default: from config)")
    p.add_argument("--address-file", help="instance address file written by kairos-servers (default: from config)")
    p.add_argument(
        "--wait-for-addresses", type=float, default=30.0, metavar="S",
        help="wait up to S seconds for kairos-servers to write the address file (default 30; 0: do not wait)",
    )  # fmt: skip
    p.add_argument(
        "--instance",
        action="append",
        default=[],
        metavar="TYPE=URL",
        help="an instance by V2 URL, repeatable: TYPE=grpc://HOST:PORT and/or http://HOST:PORT, comma-separated "
        "(default: the config's instances, else the address file)",
    )
    p.add_argument(
        "--mode", choices=MODES,
        help="v2: serve V2 HTTP and gRPC; epp: pick endpoints for Envoy's ext_proc filter (default: from config, v2)",
    )  # fmt: skip
    p.add_argument("--epp-port", type=int, help="ext_proc port of the epp mode (0 = any free port)")
    p.add_argument("--http-port", type=int, help="HTTP port (0 = any free port); in epp mode, /metrics and health")
    p.add_argument("--grpc-port", type=int, help="gRPC port (0 = any free port)")
    p.add_argument(
        "--grpc-server", choices=GRPC_SERVERS, help="gRPC server: native (on the event loop) or grpcio (default: from config)"
    )
    p.add_argument("--depth", type=int, help="queries in flight per instance (default: from config)")
    p.add_argument(
        "--pipeline",
        action=argparse.BooleanOptionalAction,
        help="send a busy instance its next query once what it holds is estimated done within the round "
        "trip's 99th percentile, so the round trip overlaps service (default: from config, on)",
    )
    p.add_argument("--max-pending", type=int, help="bound of the pending queue (default: from config)")
    p.add_argument(
        "--client-margin-ms",
        type=float,
        metavar="MS",
        help="time out of each query's QoS for the legs between client and gateway (default: from config, 0)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of randomised policies")
    p.add_argument("--log-level", default="WARNING", type=str.upper, choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
                   help="logging level (default: WARNING)")
    return p.parse_args(argv)


def _check_flags(args: argparse.Namespace) -> None:
    # The config's bounds for the same fields.
    for flag, lo, hi in (("http_port", 0, 65535), ("grpc_port", 0, 65535), ("epp_port", 0, 65535),
                         ("depth", 1, MAX_DEPTH), ("max_pending", 1, MAX_PENDING)):
        value = getattr(args, flag)
        if value is not None and not lo <= value <= hi:
            raise ConfigError(f"--{flag.replace('_', '-')}: expected an integer in [{lo}, {hi}], got {value}")
    if not 0 <= args.wait_for_addresses <= 3600:
        raise ConfigError(f"--wait-for-addresses: expected seconds in [0, 3600], got {args.wait_for_addresses:g}")


def _reads_address_file(args: argparse.Namespace, m: ModelConfig) -> bool:
    """Whether this model's instances come from the address file (not the config's list)."""
    return not args.instance and not (m.instances and not args.address_file)


def _address_file(args: argparse.Namespace, config: Config) -> str | None:
    """The address file the instances come from, if any model needs it."""
    if not any(_reads_address_file(args, m) for m in config.models):
        return None
    return str(args.address_file or config.servers.address_file)


async def wait_for_addresses(path: str, timeout_s: float) -> None:
    """Wait until ``path`` exists and its writer runs: started back to back, the gateway must not
    race kairos-servers, nor read the addresses of a pool that has exited."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    said = False
    while True:
        stale = None
        if Path(path).exists():
            listed = read_address_file(path)
            if writer_alive(listed):
                return
            stale = listed.pid
        if loop.time() >= deadline:
            if stale is not None:
                raise PoolNotFound(f"{path}: written by kairos-servers pid {stale}, which has exited; start kairos-servers")
            raise PoolNotFound(f"{path}: no address file after {timeout_s:g} s; is kairos-servers running with this config?")
        if not said:
            print(f"{PROG}: waiting up to {timeout_s:g} s for kairos-servers to write {path}", file=sys.stderr, flush=True)
            said = True
        await asyncio.sleep(0.2)


def _instances(args: argparse.Namespace, config: Config) -> dict[str, list[Endpoint]]:
    """Each model's instances: ``--instance`` flags (one model only), else the config's, else
    the address file's (a model the config lists no instances for reads the file too)."""
    if args.instance:
        if len(config.models) > 1:
            raise ConfigError("--instance: only for a one-model config; list each model's instances in the config")
        return {config.model: parse_instance_flags(args.instance, config.catalogue.types if config.catalogue else None)}
    out = {}
    for m in config.models:
        if _reads_address_file(args, m):
            out[m.name] = load_address_file(args.address_file or config.servers.address_file, m.name, m.variant_names)
        else:
            out[m.name] = list(m.instances)
    return out


async def serve(args: argparse.Namespace) -> None:
    config = load_config(args.config)
    _check_flags(args)
    path = _address_file(args, config)
    if path is not None:
        await wait_for_addresses(path, args.wait_for_addresses)
    instances = _instances(args, config)
    settings = GatewaySettings.from_config(
        config,
        policy=args.policy,
        depth=args.depth,
        max_pending=args.max_pending,
        pipeline=args.pipeline,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        grpc_server=args.grpc_server,
        mode=args.mode,
        epp_port=args.epp_port,
        seed=args.seed,
        client_margin_ms=None if args.client_margin_ms is None else client_margin(
            args.client_margin_ms, min(c.qos_ms for m in config.models for c in m.classes), "--client-margin-ms"
        ),
    )
    gateway = Gateway(config, instances, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await gateway.start()
    except OSError as exc:
        await gateway.stop(0)
        raise ListenError(f"cannot listen: {exc}") from None
    except ListenError:
        await gateway.stop(0)
        raise
    # The gateway owns this process: gRPC's helper threads must not preempt the event loop.
    demoter = loop.create_task(keep_helper_threads_demoted())
    pools = [s.core.dispatcher.instances for s in gateway.registry]
    healthy = sum(i.healthy for pool in pools for i in pool)
    freeze_startup_objects()
    listening = (
        f"epp={config.host}:{gateway.epp_port} metrics={config.host}:{gateway.http_port}"
        if gateway.picker
        else f"http={config.host}:{gateway.http_port} grpc={config.host}:{gateway.grpc_port}"
    )
    print(
        f"{PROG} ready {listening} "
        f"policy={settings.policy} model={','.join(gateway.registry.names)} "
        f"instances={sum(len(p) for p in pools)} healthy={healthy}"
        + (f" admin={config.gateway.admin_host}:{gateway.admin_port}" if config.gateway.admin_port is not None else ""),
        flush=True,
    )
    await stop.wait()
    logging.getLogger("kairos.gateway").warning("stopping: answering %d queries in flight", gateway.plane.outstanding)
    demoter.cancel()
    await gateway.stop()


def _run(coro_args: argparse.Namespace) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        asyncio.run(serve(coro_args))
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(coro_args))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format=f"{PROG}: %(message)s", stream=sys.stderr)
    try:
        _run(args)
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except RuntimeFailure as exc:  # a port in use, no pool: as in kairos-servers
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
