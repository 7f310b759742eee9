"""The one rule for an instance's addresses, wherever they come from (the config, ``--instance``,
the admin API): ``http://HOST:PORT[/PREFIX]`` and gRPC ``HOST:PORT`` (``grpc://`` allowed)."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from gateway.errors import ConfigError

_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def host_problem(host: str) -> str | None:
    """Why ``host`` (a name, an IPv4 address or a bracketed IPv6 one) is no instance's host: an
    admin API client gave hosts with spaces, newlines, ``0.0.0.0``."""
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        ip = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        if bracketed or ":" in host:
            return "not an IP address"
        labels = host.removesuffix(".").split(".")
        if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
            return "not a host name"
        return None
    if ip.version == 6 and not bracketed:
        return "an IPv6 address goes in brackets"
    if ip.is_unspecified or ip.is_multicast:
        return "not an address an instance listens on"
    return None


def split_http_url(url: str) -> tuple[str, int, str]:
    """An instance's ``http://HOST:PORT[/PREFIX]`` as (host, port, prefix: a V2 server mounted
    under a path, else ""); ConfigError for anything else."""
    try:
        parts = urlsplit(url.rstrip("/"))
        port = parts.port
    except ValueError:  # a bracketed host that is no IPv6 address; a port not a number, or out of range
        raise ConfigError(f"{url!r}: expected http://HOST:PORT") from None
    if parts.scheme != "http" or not parts.hostname or not port or parts.query or parts.fragment:
        raise ConfigError(f"{url!r}: expected http://HOST:PORT")
    host = parts.netloc.rpartition("@")[2].rpartition(":")[0]
    if parts.username is not None or host_problem(host) or not all(" " < c <= "~" for c in url):
        raise ConfigError(f"{url!r}: expected http://HOST:PORT")  # no credentials, no spaces or controls
    return parts.hostname, port, parts.path


def grpc_address(text: str) -> str:
    """An instance's gRPC ``HOST:PORT`` (a ``grpc://`` prefix dropped); ConfigError otherwise."""
    address = text.removeprefix("grpc://")
    host, sep, port = address.rpartition(":")
    if (not sep or not host or "/" in address or not port.isascii() or not port.isdigit()
            or not 0 < int(port) < 65536 or host_problem(host)):
        raise ConfigError(f"{text!r}: expected HOST:PORT")
    return address


def instance_urls(http: str | None, grpc: str | None, where: str | None = None) -> tuple[str | None, str | None]:
    """Both addresses checked (at least one given): (http URL without a trailing /, gRPC address).
    Errors name ``where`` (a config path), or the fields alone when None (a request's)."""
    if http is None and grpc is None:
        raise ConfigError(f"{where + ': ' if where else ''}expected an http URL, a grpc address, or both")
    prefix = f"{where}." if where else ""
    if http is not None:
        try:
            split_http_url(http)
        except ConfigError:
            raise ConfigError(f"{prefix}http: expected http://HOST:PORT, got {http[:200]!r}") from None
        http = http.rstrip("/")
    try:
        return http, grpc_address(grpc) if grpc is not None else None
    except ConfigError:
        raise ConfigError(f"{prefix}grpc: expected HOST:PORT, got {(grpc or '')[:200]!r}") from None
