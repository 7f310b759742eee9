"""``kairos-profile``: measure a model's latency profile on any V2 endpoint and write the profile
file that the gateway, the simulator and the allocator load (format: docs/profiles.md).

    kairos-profile --url http://127.0.0.1:8080 --model digits --type local-cpu --out profiles/digits.json

Reads the server's and the model's metadata, shapes random payloads from it (or from
``--input``), warms up, then times ``--samples`` requests per batch size. An existing file for
the same model keeps its other instance types. Writes a plot of latency against batch size
beside the file. Errors print one line and exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from gateway.config import check_model_name
from gateway.errors import ConfigError, ProfileError
from gateway.profiles.measure import (
    TIMINGS,
    GrpcTarget,
    HttpTarget,
    Measurement,
    ProfilingError,
    Target,
    default_grid,
    measure,
)
from gateway.profiles.payload import TensorSpec, parse_input_flag, specs_from_metadata
from gateway.profiles.profile import QUANTILE_LEVELS, load_profile_file, summarize_samples

PROG = "kairos-profile"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description="Measure a V2 model's latency profile over batch sizes")
    p.add_argument("--url", required=True, help="the V2 endpoint: http://HOST:PORT or grpc://HOST:PORT")
    p.add_argument("--model", required=True, help="model name")
    p.add_argument("--version", default="", help="model version (default: the server's choice)")
    p.add_argument("--type", required=True, help="the instance type this server runs on (a label in the file)")
    p.add_argument("--out", type=Path, help="profile file to write (default: profiles/MODEL.json)")
    p.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="NAME:DATATYPE:DIMS",
        help="an input, one row's shape (repeatable; default: from the model's metadata), e.g. x:FP64:64",
    )
    p.add_argument("--batches", help="comma-separated batch sizes (default: powers of two up to --max-batch)")
    p.add_argument("--max-batch", type=int, default=256, help="largest batch of the default grid (default: 256)")
    p.add_argument("--samples", type=int, default=50, help="timed requests per batch size (default: 50)")
    p.add_argument("--warmup", type=int, default=5, help="untimed requests per batch size first (default: 5)")
    p.add_argument("--concurrency", type=int, default=1, help="requests in flight (default: 1: service time)")
    p.add_argument(
        "--timing",
        choices=TIMINGS,
        default="auto",
        help="server: the service time the server reports; client: the round trip; auto (default): "
        "the server's where every answer reports one",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random payloads")
    p.add_argument("--plot", type=Path, help="plot file (default: the profile file with .png)")
    p.add_argument("--no-plot", action="store_true", help="write no plot")
    return p.parse_args(argv)


def _grid(args: argparse.Namespace) -> list[int]:
    if args.batches:
        try:
            grid = sorted({int(b) for b in args.batches.split(",")})
        except ValueError:
            raise ConfigError(f"--batches {args.batches!r}: expected comma-separated integers") from None
        if grid[0] < 1:
            raise ConfigError("--batches: every batch size must be >= 1")
        return grid
    if args.max_batch < 1:
        raise ConfigError("--max-batch: expected an integer >= 1")
    return default_grid(args.max_batch)


def _target(args: argparse.Namespace) -> Target:
    url: str = args.url
    if url.startswith("grpc://"):
        return GrpcTarget(url, args.model, args.version)
    if url.startswith("http://"):
        return HttpTarget(url, args.model, args.version)
    raise ConfigError(f"--url {url!r}: expected http://HOST:PORT or grpc://HOST:PORT")


class Bar:
    """One line on stderr per batch size, redrawn in place on a terminal."""

    def __init__(self, grid: list[int]) -> None:
        self.grid = grid
        self.tty = sys.stderr.isatty()

    def __call__(self, batch: int, done: int, total: int) -> None:
        step = self.grid.index(batch) + 1
        if not self.tty and done != total:
            return
        filled = done * 20 // total
        line = f"[{'#' * filled}{'.' * (20 - filled)}] batch {batch:>5} ({step}/{len(self.grid)}): {done}/{total}"
        sys.stderr.write(f"\r{line}\x1b[K" + ("\n" if done == total else "") if self.tty else line + "\n")
        sys.stderr.flush()


def write_profile(path: Path, model: str, type_name: str, result: Measurement, source: str) -> dict[str, object]:
    """Add (or replace) ``type_name`` in the profile file at ``path``; the file's contents."""
    doc: dict[str, object] = {"model": model, "unit": "ms", "quantile_levels": QUANTILE_LEVELS, "types": {}}
    if path.exists():
        load_profile_file(path)  # ProfileError if it is not a profile file
        existing = orjson.loads(path.read_bytes())
        if existing["model"] != model:
            raise ProfileError(f"{path}: holds model {existing['model']!r}, not {model!r}")
        if existing["quantile_levels"] != QUANTILE_LEVELS:  # its other types cannot be kept as they are
            raise ProfileError(f"{path}: has other quantile levels than {QUANTILE_LEVELS}; write to another file")
        doc = existing
    doc["source"] = source
    types = doc["types"]
    assert isinstance(types, dict)
    types[type_name] = summarize_samples(result.samples)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    return doc


def plot_profile(path: Path, model: str, type_name: str, result: Measurement) -> None:
    plot_summary(path, model, type_name, summarize_samples(result.samples), QUANTILE_LEVELS, result.timing)


def plot_stored(profile_file: Path, type_name: str, path: Path) -> None:
    """The plot of one instance type of a stored profile file, drawn from its quantiles (the
    same as the one written when it was measured), measuring nothing."""
    load_profile_file(profile_file)  # ProfileError if it is not a profile file
    doc = orjson.loads(profile_file.read_bytes())
    timing = "server" if str(doc.get("source", "")).endswith("server-measured") else "client"
    plot_summary(path, doc["model"], type_name, doc["types"][type_name], doc["quantile_levels"], timing)


def plot_summary(path: Path, model: str, type_name: str, entry: dict[str, Any], levels: Sequence[float],
                 timing: str) -> None:
    """Latency against batch size from a profile file's entry for one type (``summarize_samples``)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = list(entry["batch"])
    columns = [list(levels).index(v) for v in (0.05, 0.5, 0.95, 0.99)]
    q = np.asarray(entry["quantiles"], dtype=float)[:, columns]
    mean = list(entry["mean"])
    fig, ax = plt.subplots(figsize=(8.4, 4.2))  # the key right of the axes
    ax.fill_between(batches, q[:, 0], q[:, 2], alpha=0.25, label="5th-95th percentile")
    ax.plot(batches, mean, marker="o", label="mean")
    ax.plot(batches, q[:, 1], linestyle="--", label="median")
    ax.scatter(batches, q[:, 3], marker="x", color="black", label="99th percentile", zorder=3)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    if q[:, 3].max() > 10 * q[:, 0].min():  # over a decade: the spread at small batches stays visible
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        scale = "log scale"
    else:  # the axis spans this plot's own range: say so, as plots side by side differ
        scale = "axis not from 0"
    ax.set_xlabel("batch size")
    ax.set_ylabel(f"service time (ms, {timing}-measured;\n{scale})")
    ax.set_title(f"{model} on {type_name}: latency by batch size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)  # clear of the markers
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


async def run(args: argparse.Namespace) -> int:
    check_model_name(args.model)
    check_model_name(args.type, "--type")
    for flag, lo in (("samples", 1), ("warmup", 0), ("concurrency", 1)):
        if getattr(args, flag) < lo:
            raise ConfigError(f"--{flag}: expected an integer >= {lo}")
    grid = _grid(args)
    given = [parse_input_flag(s) for s in args.input]
    out: Path = args.out or Path("profiles") / f"{args.model}.json"
    target = _target(args)
    try:
        metadata = await target.metadata()
        specs: list[TensorSpec] = given or specs_from_metadata(metadata)
        server = target.server.describe() if target.server else "a server without metadata"
        print(
            f"{PROG}: {args.model} on {args.url} ({server}); inputs "
            + ", ".join(f"{s.name} {s.datatype} [batch, {', '.join(map(str, s.row_shape))}]" for s in specs),
            file=sys.stderr,
        )
        result = await measure(
            target, specs, grid, args.samples, args.warmup, args.concurrency, args.timing, args.seed, Bar(grid)
        )
    finally:
        await target.close()
    today = datetime.date.today().isoformat()
    source = (
        f"kairos-profile {args.url} on {today}: {args.samples} samples per batch at concurrency "
        f"{args.concurrency}, {result.timing}-measured"
    )
    write_profile(out, args.model, args.type, result, source)
    print(f"wrote {out} ({args.type}: batch sizes {grid[0]}..{grid[-1]}, {result.timing}-measured)")
    if not args.no_plot:
        plot = args.plot or out.with_suffix(".png")
        plot_profile(plot, args.model, args.type, result)
        print(f"wrote {plot}")
    for b in grid:
        s = result.samples[b]
        print(f"  batch {b:>5}: mean {s.mean():8.3f} ms  p50 {np.median(s):8.3f}  p99 {np.quantile(s, 0.99):8.3f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(run(args))
    except (ConfigError, ProfileError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except ProfilingError as exc:  # the endpoint: unreachable, refusing, not a V2 server
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
