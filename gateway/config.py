"""Typed, validated configuration (``config.json``).

Every wrong or missing field raises one ``ConfigError`` that names the field's path and the
value expected; callers print it and exit, never a traceback.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.endpoint_urls import instance_urls
from gateway.errors import BadRequest, ConfigError
from gateway.fields import REQUIRED, Fields
from gateway.jsonfile import read_json_file
from gateway.policies import POLICY_NAMES
from gateway.profiles import Catalogue, InstanceType, ProfileSet, load_catalogue, load_profiles
from gateway.profiles.profile import MAX_BATCH_SIZE
from gateway.protocol.limits import check_name

BACKEND_PROTOCOLS = ("grpc", "http")
# The gateway's own gRPC server on the event loop, or grpc.aio's (gateway/grpc_server/).
GRPC_SERVERS = ("native", "grpcio")
# "v2": the gateway serves V2 itself; "epp": it picks endpoints for Envoy (gateway/epp/).
MODES = ("v2", "epp")
LATE_QUERIES = ("shed", "serve")


@dataclass(frozen=True, slots=True)
class PoolEntry:
    type: str
    count: int
    variant: str | None = None  # None: the model itself


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where one instance listens (either protocol may be missing): a V2 server the gateway
    fronts, from the config, ``--instance`` or a ``kairos-servers`` address file."""

    name: str
    type: str
    http_url: str | None = None  # http://host:port
    grpc_address: str | None = None  # host:port
    variant: str | None = None  # the model variant it serves (its model name there); None: the model


# Batch limit of a model with no latency profile (with one, the profile's largest batch).
DEFAULT_MAX_BATCH = 1024
MAX_BODY_BYTES = 1 << 32  # the largest request a gateway may be set to take (4 GiB)
GRPCIO_MAX_MESSAGE_BYTES = (1 << 31) - 1  # grpcio's options are C ints
MAX_WAIT_MS = 86_400_000.0  # a day
MAX_PENDING = 1_000_000  # queued queries a model may hold
MAX_DEPTH = 1000  # queries in flight per instance
MAX_INSTANCES = 100_000  # the most gateway.max_instances may allow
DEFAULT_CLASS = "default"  # the one class of a model that declares none
DEFAULT_ATTAINMENT = 0.99
MAX_MODELS = 256
MAX_CLASSES = 16


@dataclass(frozen=True, slots=True)
class ServiceClass:
    """A service class of a model: its queries should be answered within ``qos_ms``, at least
    ``attainment`` of them. Under overload, a class of lower ``priority`` is shed first."""

    name: str
    qos_ms: float
    attainment: float = DEFAULT_ATTAINMENT
    priority: int = 0  # higher: more important


@dataclass(frozen=True, slots=True)
class Variant:
    """A variant of a model (a smaller or larger network for the same task): its instances serve
    it under its own name, with its own latency profiles. ``accuracy``: the user's figure for it
    (top-1, say); the gateway prefers the more accurate variant when a deadline allows."""

    name: str
    accuracy: float | None = None


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """One model the gateway serves: its service classes and the instances that serve it."""

    name: str
    classes: tuple[ServiceClass, ...]
    default_class: str
    # The emulated pool ``kairos-servers`` starts; when only ``instances`` are listed, their
    # count per type (what the simulator and the allocator take).
    pool: tuple[PoolEntry, ...]
    instances: tuple[Endpoint, ...] = ()  # real servers to front (empty: the emulated pool)
    max_batch: int | None = None  # without a profile: the largest batch accepted
    variants: tuple[Variant, ...] = ()  # empty: the model itself is its one variant

    @property
    def variant_names(self) -> list[str]:
        return [v.name for v in self.variants] or [self.name]

    def accuracy(self, variant: str | None) -> float | None:
        for v in self.variants:
            if v.name == (variant or self.name):
                return v.accuracy
        return None

    @property
    def default(self) -> ServiceClass:
        return self.service_class(self.default_class)

    @property
    def qos_ms(self) -> float:
        """The default class's target."""
        return self.default.qos_ms

    def service_class(self, name: str) -> ServiceClass:
        for c in self.classes:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def pool_size(self) -> int:
        return sum(e.count for e in self.pool)

    def instance_types(self) -> list[str]:
        """One entry per instance, in pool order (the order ports are assigned in)."""
        return [e.type for e in self.pool for _ in range(e.count)]

    def instance_variants(self) -> list[tuple[str, str]]:
        """(type, variant it serves) per instance, in pool order."""
        return [(e.type, e.variant or self.name) for e in self.pool for _ in range(e.count)]


@dataclass(frozen=True, slots=True)
class ServersConfig:
    http_port: int = 9100
    grpc_port: int = 9300
    workers: int = 1
    address_file: str = ".kairos/instances.json"
    seed: int = 0
    # kairos-servers' admin API (servers.admin): start and stop instances at run time. Port
    # (0: any free one; None: not served) and host, as the gateway's admin API.
    admin_port: int | None = None
    admin_host: str = "127.0.0.1"
    max_started: int = 1024  # instances the admin API may have started at once (each holds two sockets)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    http_port: int = 8000
    grpc_port: int = 8001
    policy: str = "kairos"
    max_pending: int = 2000
    depth_per_instance: int = 1
    # Send an instance its next query once its current one has run its estimated service time,
    # so that the transport round trip overlaps service (gateway/dispatch/dispatcher.py).
    pipeline: bool = True
    probe_interval_s: float = 1.0
    # Instances in all the pools: each is probed and weighed in every decision, so an admin API
    # client adding thousands of unreachable ones slowed every query (config and admin API alike).
    max_instances: int = 1024
    backend_protocol: str = "http"  # gRPC queries translated to HTTP: cheaper (backend/grpc_over_http.py)
    # The largest request: 4x gRPC's default 4 MiB. Unfinished requests may hold about twice
    # this (HTTP bodies being received, one gRPC window), so it bounds memory under hostile load.
    max_body_bytes: int = 16 * 1024 * 1024
    grpc_server: str = "native"
    # Out of each query's QoS, what the legs the gateway does not see take: the request's way in
    # (before the gateway has read it) and the answer's way back. QoS is met at the client.
    client_margin_ms: float = 0.0
    # A query that can no longer meet its deadline: "shed" answers it at once with a deadline
    # error and refuses at admission what the pool cannot serve in time; "serve" serves it late,
    # every query within ``max_wait_ms`` of arriving (None: the QoS).
    late_queries: str = "shed"
    max_wait_ms: float | None = None
    # Error answers (5xx, gRPC INTERNAL) in a row that take an instance out of rotation.
    outlier_consecutive_errors: int = 5
    max_attempts: int = 3  # dispatches per query: the first and retries on other instances
    header_timeout_s: float = 5.0  # HTTP/1.1: the request head must arrive within this
    body_timeout_s: float = 10.0  # HTTP/1.1: the body, within this once the head is in
    # Bytes of HTTP request bodies being received at once, across connections (None: the larger
    # of max_body_bytes and 32 MiB); past it the largest unfinished ones are evicted (408).
    max_buffered_bytes: int | None = None
    # While two or more HTTP bodies are past their first body_pace_after_bytes, those bytes share
    # this rate (0: no pacing): a burst of large bodies cannot take the event loop from small queries.
    body_pace_bytes_per_s: float = 64 * 1024 * 1024
    body_pace_after_bytes: int = 256 * 1024
    # The pool admin API (gateway.admin): its port (0: any free one; None: not served) and host
    # (loopback unless a bearer token is set in KAIROS_ADMIN_TOKEN).
    admin_port: int | None = None
    admin_host: str = "127.0.0.1"
    # The endpoint picker mode: the ext_proc service on ``epp_port`` (the inference extension's
    # 9002); ``http_port`` then serves /metrics and health only.
    mode: str = "v2"
    epp_port: int = 9002


@dataclass(frozen=True, slots=True)
class Config:
    """The whole config. ``models`` in the order given; the single-model properties (``model``,
    ``qos_ms``, ``pool``, ...) read the first, what single-model tools (the simulator, the
    allocator, the demo) take."""

    models: tuple[ModelConfig, ...]
    host: str = "127.0.0.1"
    servers: ServersConfig = ServersConfig()
    gateway: GatewayConfig = GatewayConfig()
    # Latency profiles (a file, or a directory of files) on top of the shipped ones.
    profiles: Path | None = None
    catalogue: Catalogue | None = None  # shipped instance types plus the declared ones

    @property
    def primary(self) -> ModelConfig:
        return self.models[0]

    @property
    def model(self) -> str:
        return self.primary.name

    @property
    def qos_ms(self) -> float:
        return self.primary.qos_ms

    @property
    def pool(self) -> tuple[PoolEntry, ...]:
        return self.primary.pool

    @property
    def instances(self) -> tuple[Endpoint, ...]:
        return self.primary.instances

    @property
    def max_batch(self) -> int | None:
        return self.primary.max_batch

    def model_config(self, name: str) -> ModelConfig:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)

    def profile_set(self) -> ProfileSet:
        """The shipped profiles, with this config's own on top."""
        shipped = load_profiles()
        return shipped.merged(load_profiles(self.profiles)) if self.profiles is not None else shipped

    @property
    def pool_size(self) -> int:
        return self.primary.pool_size

    def pool_spec(self) -> tuple[tuple[str, int], ...]:
        """(type, count) pairs, the form the simulator and the allocator take (a variant's
        instances as the kind ``VARIANT/TYPE``, ``gateway.variants``)."""
        m = self.primary
        return tuple((e.type if e.variant in (None, m.name) else f"{e.variant}/{e.type}", e.count) for e in self.pool)

    def instance_types(self) -> list[str]:
        """One entry per instance, in pool order (the order ports are assigned in)."""
        return self.primary.instance_types()




def _port(f: Fields, key: str, default: int) -> int:
    return f.int(key, default, lo=0, hi=65535)


def parse_config(raw: Any, catalogue: Catalogue | None = None, base_dir: Path | None = None) -> Config:
    """``base_dir``: where relative paths (profiles) are taken from; the config file's directory.

    The models come as a ``models`` list or, for one model, as its fields at the top level
    (``model``, ``qos_ms``, ``pool``, ``instances``, ``max_batch``: one class, ``default``)."""
    top = Fields(raw, "")
    top.unknown(
        {"model", "qos_ms", "host", "pool", "instances", "instance_types", "profiles", "max_batch",
         "servers", "gateway", "models", "classes", "default_class", "variants"}
    )
    catalogue = _with_declared_types(catalogue or load_catalogue(), top.get("instance_types", {}))
    type_names = tuple(sorted(catalogue.types))
    if "models" in top.raw:
        one_model = ("model", "qos_ms", "pool", "instances", "max_batch", "classes", "default_class", "variants")
        shorthand = sorted(k for k in one_model if k in top.raw)
        if shorthand:
            raise ConfigError(f"{shorthand[0]}: with a models list, each model's fields go in its entry")
        models = _models(top.get("models", REQUIRED), catalogue, type_names)
    else:
        models = [_model(top, catalogue, type_names, single=True)]
    profiles = None
    if "profiles" in top.raw:
        profiles = Path(top.str("profiles"))
        if base_dir is not None and not profiles.is_absolute():
            profiles = base_dir / profiles
        if not profiles.exists():
            raise ConfigError(f"profiles: no such file or directory {str(profiles)!r}")

    s = Fields(top.get("servers", {}), "servers")
    s.unknown({f for f in ServersConfig.__dataclass_fields__})
    d = ServersConfig()
    servers = ServersConfig(
        http_port=_port(s, "http_port", d.http_port),
        grpc_port=_port(s, "grpc_port", d.grpc_port),
        workers=s.int("workers", d.workers, lo=1, hi=64),
        address_file=s.str("address_file", d.address_file),
        seed=s.int("seed", d.seed),
        admin_port=_port(s, "admin_port", 0) if s.raw.get("admin_port") is not None else None,
        admin_host=s.str("admin_host", d.admin_host),
        max_started=s.int("max_started", d.max_started, lo=1, hi=MAX_INSTANCES),
    )
    g = Fields(top.get("gateway", {}), "gateway")
    g.unknown({f for f in GatewayConfig.__dataclass_fields__})
    dg = GatewayConfig()
    gateway = GatewayConfig(
        http_port=_port(g, "http_port", dg.http_port),
        grpc_port=_port(g, "grpc_port", dg.grpc_port),
        policy=g.str("policy", dg.policy, choices=POLICY_NAMES),
        max_pending=g.int("max_pending", dg.max_pending, lo=1, hi=MAX_PENDING),
        depth_per_instance=g.int("depth_per_instance", dg.depth_per_instance, lo=1, hi=MAX_DEPTH),
        pipeline=g.bool("pipeline", dg.pipeline),
        # Each probe waits at most the interval (1 s at most): below 10 ms they flap and burn CPU.
        probe_interval_s=g.float("probe_interval_s", dg.probe_interval_s, lo=0.01, hi=3600.0),
        max_instances=g.int("max_instances", dg.max_instances, lo=1, hi=MAX_INSTANCES),
        backend_protocol=g.str("backend_protocol", dg.backend_protocol, choices=BACKEND_PROTOCOLS),
        max_body_bytes=g.int("max_body_bytes", dg.max_body_bytes, lo=1024, hi=MAX_BODY_BYTES),
        grpc_server=g.str("grpc_server", dg.grpc_server, choices=GRPC_SERVERS),
        client_margin_ms=client_margin(
            g.float("client_margin_ms", dg.client_margin_ms, positive=False),
            min(c.qos_ms for m in models for c in m.classes),
        ),
        late_queries=g.str("late_queries", dg.late_queries, choices=LATE_QUERIES),
        max_wait_ms=g.float("max_wait_ms", hi=MAX_WAIT_MS) if g.raw.get("max_wait_ms") is not None else None,
        outlier_consecutive_errors=g.int(
            "outlier_consecutive_errors", dg.outlier_consecutive_errors, lo=1, hi=1000
        ),
        max_attempts=g.int("max_attempts", dg.max_attempts, lo=1, hi=10),
        header_timeout_s=g.float("header_timeout_s", dg.header_timeout_s, lo=0.01, hi=3600.0),
        body_timeout_s=g.float("body_timeout_s", dg.body_timeout_s, lo=0.01, hi=3600.0),
        max_buffered_bytes=g.int("max_buffered_bytes", lo=1024) if g.raw.get("max_buffered_bytes") is not None else None,
        body_pace_bytes_per_s=_pace(g.float("body_pace_bytes_per_s", dg.body_pace_bytes_per_s, positive=False, lo=0.0, hi=1e12)),
        body_pace_after_bytes=g.int("body_pace_after_bytes", dg.body_pace_after_bytes, lo=0),
        admin_port=_port(g, "admin_port", 0) if g.raw.get("admin_port") is not None else None,
        admin_host=g.str("admin_host", dg.admin_host),
        mode=g.str("mode", dg.mode, choices=MODES),
        epp_port=_port(g, "epp_port", dg.epp_port),
    )
    _check_gateway(gateway)
    return Config(
        models=tuple(models),
        host=top.str("host", "127.0.0.1"),
        servers=servers,
        gateway=gateway,
        profiles=profiles,
        catalogue=catalogue,
    )


def _check_gateway(g: GatewayConfig) -> None:
    """Combinations of fields a gateway cannot work with, refused before it starts."""
    if g.max_buffered_bytes is not None and g.max_buffered_bytes < g.max_body_bytes:
        raise ConfigError(
            f"gateway.max_buffered_bytes: {g.max_buffered_bytes} is below gateway.max_body_bytes "
            f"({g.max_body_bytes}): every request larger than it would be refused"
        )
    if g.grpc_server == "grpcio" and g.max_body_bytes > GRPCIO_MAX_MESSAGE_BYTES:
        raise ConfigError(
            f"gateway.max_body_bytes: grpcio takes messages of at most {GRPCIO_MAX_MESSAGE_BYTES} bytes, "
            f"got {g.max_body_bytes} (with grpc_server: grpcio)"
        )
    if g.max_wait_ms is not None and g.late_queries == "shed":
        raise ConfigError('gateway.max_wait_ms: applies to late_queries "serve" only (late queries are shed)')


def _models(raw: Any, catalogue: Catalogue, type_names: tuple[str, ...]) -> list[ModelConfig]:
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_MODELS:
        raise ConfigError(f"models: expected a list of 1 to {MAX_MODELS} model objects")
    models = []
    for i, item in enumerate(raw):
        f = Fields(item, f"models[{i}]")
        f.unknown({"name", "qos_ms", "classes", "default_class", "variants", "pool", "instances", "max_batch"})
        models.append(_model(f, catalogue, type_names))
    names = [m.name for m in models]
    dup = _first_duplicate(names)
    if dup is not None:
        raise ConfigError(f"models: model {dup!r} is listed twice")
    endpoints = [e.name for m in models for e in m.instances]
    dup = _first_duplicate(endpoints)
    if dup is not None:
        raise ConfigError(f"models: instance name {dup!r} is used twice; names must be unique across models")
    return models


def _model(f: Fields, catalogue: Catalogue, type_names: tuple[str, ...], single: bool = False) -> ModelConfig:
    """One model's entry (or, ``single``, the top level's shorthand fields)."""
    name = check_model_name(f.str("model" if single else "name"), f.name("model" if single else "name"))
    qos_key = f.name("qos_ms")
    if "classes" in f.raw:
        if "qos_ms" in f.raw:
            raise ConfigError(f"{qos_key}: with classes, each class gives its own qos_ms")
        classes = _classes(f.get("classes", REQUIRED), f.name("classes"))
        default = f.str("default_class", classes[0].name)
        if default not in {c.name for c in classes}:
            raise ConfigError(
                f"{f.name('default_class')}: expected one of {', '.join(c.name for c in classes)}, got {default!r}"
            )
    else:
        if "qos_ms" not in f.raw and name not in catalogue.qos_ms:
            raise ConfigError(f"{qos_key}: missing; it is required for a model without a shipped target ({name!r})")
        classes = [ServiceClass(DEFAULT_CLASS, f.float("qos_ms", catalogue.qos_ms.get(name)))]
        if "default_class" in f.raw:
            f.str("default_class", choices=(DEFAULT_CLASS,))
        default = DEFAULT_CLASS
    variants = _variants(f.get("variants", []), f.name("variants")) if "variants" in f.raw else []
    known = tuple(v.name for v in variants) or (name,)
    instances = _instances(f.get("instances", []), type_names, f.name("instances"), known)
    if "pool" in f.raw or not instances:
        pool = _pool(f.get("pool", REQUIRED), type_names, f.name("pool"), known)
    else:
        counts: dict[tuple[str, str | None], int] = {}
        for inst in instances:
            counts[inst.type, inst.variant] = counts.get((inst.type, inst.variant), 0) + 1
        pool = [PoolEntry(t, n, v) for (t, v), n in counts.items()]
    if variants and name not in known:  # an entry without a variant serves the model itself
        plain = [f"instances[{i}]" for i, e in enumerate(instances) if e.variant is None]
        if "pool" in f.raw:
            plain += [f"pool[{i}]" for i, p in enumerate(pool) if p.variant is None]
        if plain:
            raise ConfigError(f"{f.name(plain[0])}: no variant given, and {name!r} is not among the model's variants "
                              f"({', '.join(known)}): name one")
    max_batch = f.int("max_batch", lo=1, hi=MAX_BATCH_SIZE) if "max_batch" in f.raw else None
    return ModelConfig(
        name=name,
        classes=tuple(classes),
        default_class=default,
        pool=tuple(pool),
        instances=tuple(instances),
        max_batch=max_batch,
        variants=tuple(variants),
    )


def _first_duplicate(names: list[str]) -> str | None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            return n
        seen.add(n)
    return None


def _variants(raw: Any, path: str) -> list[Variant]:
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_CLASSES:
        raise ConfigError(f'{path}: expected a list of 1 to {MAX_CLASSES} {{"name", "accuracy"}} objects')
    out = []
    for i, item in enumerate(raw):
        f = Fields(item, f"{path}[{i}]")
        f.unknown({"name", "accuracy"})
        accuracy = f.float("accuracy", positive=False) if f.raw.get("accuracy") is not None else None
        if accuracy is not None and not 0.0 <= accuracy <= 1.0:
            raise ConfigError(f"{f.name('accuracy')}: expected a fraction in [0, 1] (top-1, say), got {accuracy:g}")
        out.append(Variant(check_model_name(f.str("name"), f.name("name")), accuracy))
    names = [v.name for v in out]
    dup = _first_duplicate(names)
    if dup is not None:
        raise ConfigError(f"{path}: variant {dup!r} is listed twice")
    return out


def _variant(f: Fields, known: tuple[str, ...]) -> str | None:
    if "variant" not in f.raw:
        return None
    variant = f.str("variant")
    if variant not in known:
        raise ConfigError(f"{f.name('variant')}: expected one of the model's variants {', '.join(known)}, got {variant!r}")
    return variant


def _classes(raw: Any, path: str) -> list[ServiceClass]:
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_CLASSES:
        raise ConfigError(f'{path}: expected a list of 1 to {MAX_CLASSES} {{"name", "qos_ms"}} objects')
    out = []
    for i, item in enumerate(raw):
        f = Fields(item, f"{path}[{i}]")
        f.unknown({"name", "qos_ms", "attainment", "priority"})
        attainment = f.float("attainment", DEFAULT_ATTAINMENT)
        if not 0.0 < attainment <= 1.0:
            raise ConfigError(f"{f.name('attainment')}: expected a fraction in (0, 1], got {attainment:g}")
        out.append(
            ServiceClass(
                name=check_model_name(f.str("name"), f.name("name")),
                qos_ms=f.float("qos_ms"),
                attainment=attainment,
                priority=f.int("priority", 0, lo=-1000, hi=1000),
            )
        )
    names = [c.name for c in out]
    dup = _first_duplicate(names)
    if dup is not None:
        raise ConfigError(f"{path}: class {dup!r} is listed twice")
    return out


def _pool(
    raw: Any, type_names: tuple[str, ...], path: str = "pool", variants: tuple[str, ...] = ()
) -> list[PoolEntry]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f'{path}: expected a non-empty list of {{"type", "count"}} objects, got {raw!r}')
    pool = []
    for i, item in enumerate(raw):
        f = Fields(item, f"{path}[{i}]")
        f.unknown({"type", "count", "variant"})
        type_name = f.str("type", choices=type_names)
        pool.append(PoolEntry(type=type_name, count=f.int("count", lo=0, hi=10_000), variant=_variant(f, variants)))
    if sum(e.count for e in pool) == 0:
        raise ConfigError(f"{path}: expected at least one instance (every count is 0)")
    return pool


def _instances(
    raw: Any, type_names: tuple[str, ...], path: str = "instances", variants: tuple[str, ...] = ()
) -> list[Endpoint]:
    if not isinstance(raw, list) or len(raw) > 10_000:
        raise ConfigError(f'{path}: expected a list of {{"type", "http", "grpc"}} objects')
    out: list[Endpoint] = []
    for i, item in enumerate(raw):
        f = Fields(item, f"{path}[{i}]")
        f.unknown({"name", "type", "http", "grpc", "variant"})
        type_name = f.str("type", choices=type_names)
        http, grpc = instance_urls(f.str("http") if "http" in f.raw else None,
                                   f.str("grpc") if "grpc" in f.raw else None, f.path)
        name = check_model_name(f.str("name", f"{type_name}-{i}"), f"{f.path}.name")
        out.append(Endpoint(name, type_name, http, grpc, _variant(f, variants)))
    names = [e.name for e in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: names must be unique, got {names}")
    return out


def _with_declared_types(catalogue: Catalogue, raw: Any) -> Catalogue:
    """The catalogue plus the instance types a config declares (a declared one wins)."""
    if not isinstance(raw, dict):
        raise ConfigError('instance_types: expected an object of {"NAME": {"price_per_hour": P}}')
    if not raw:
        return catalogue
    types = dict(catalogue.types)
    for name, spec in raw.items():
        check_model_name(name, f"instance_types.{name}")
        f = Fields(spec, f"instance_types.{name}")
        f.unknown({"price_per_hour", "accelerator"})
        types[name] = InstanceType(
            name=name,
            price_per_hour=f.float("price_per_hour", positive=False),
            accelerator=f.bool("accelerator", False),
        )
    return Catalogue(types=types, qos_ms=catalogue.qos_ms)


def check_instance_type(type_name: str, type_names: Collection[str], where: str) -> None:
    """An instance type added at run time (``--instance``, the admin API) must be one of the
    catalogue's, as in the config: each type is a column of every estimate and a set of metrics."""
    if type_name not in type_names:
        raise ConfigError(f"{where}type {type_name!r} is not in the catalogue (declare it under instance_types): "
                          f"expected one of {', '.join(sorted(type_names))}")


def check_model_name(name: str, field: str = "model") -> str:
    """A model or instance name: it goes into URLs and metric labels."""
    try:
        return check_name(name, field)
    except BadRequest as exc:
        raise ConfigError(str(exc)) from None


def _pace(rate: float) -> float:
    """0 (no pacing) or at least 1 MB/s: slower would only turn concurrent large bodies into 408s."""
    if 0 < rate < 1e6:
        raise ConfigError(f"gateway.body_pace_bytes_per_s: expected 0 (off) or >= 1e6, got {rate:g}")
    return rate


def client_margin(margin_ms: float, qos_ms: float, name: str = "gateway.client_margin_ms") -> float:
    """``margin_ms`` if it is a number of ms in [0, QoS); ConfigError otherwise."""
    if not (0.0 <= margin_ms < qos_ms):
        raise ConfigError(
            f"{name}: expected a number of ms >= 0 and below the QoS ({qos_ms:g} ms), got {margin_ms:g}"
        )
    return margin_ms


def load_config(path: str | Path, catalogue: Catalogue | None = None) -> Config:
    path = Path(path)
    raw = read_json_file(path, "config file")
    try:
        return parse_config(raw, catalogue, path.parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
