"""Import the paper's raw latency traces into the project's compact profiles.

``kairos-import-profiles --traces ../shared/kairos-data/latency-traces.tar.gz``

A query's service time is compute + data-loading time, element-wise over the 100 runs; the
single largest sum is dropped as warm-up, as the paper does. Each (model, type, batch) keeps
the mean and a quantile table.
"""

from __future__ import annotations

import argparse
import re
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import orjson

from gateway.profiles.profile import PROFILE_DIR, QUANTILE_LEVELS, summarize_samples
from gateway.usage import plain

_NAME = re.compile(r"^(?P<model>[a-z0-9]+)_(?P<batch>\d+)_1\.json$")


def read_traces(archive: Path) -> dict[tuple[str, str], dict[int, np.ndarray]]:
    """Service-time samples keyed by (model, type) then batch size."""
    compute: dict[tuple[str, str, int], list[float]] = {}
    load: dict[tuple[str, str, int], list[float]] = {}
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            parts = Path(member.name).parts
            match = _NAME.match(parts[-1])
            if match is None:
                continue
            fh = tar.extractfile(member)
            assert fh is not None
            values = orjson.loads(fh.read())
            key = (match["model"], parts[-2], int(match["batch"]))
            (load if "logs_load" in parts else compute)[key] = values
    out: dict[tuple[str, str], dict[int, np.ndarray]] = defaultdict(dict)
    for key, comp in compute.items():
        if key not in load:
            raise SystemExit(f"no load-time trace for {key}")
        total = np.sort(np.asarray(comp) + np.asarray(load[key]))[:-1]  # drop the warm-up outlier
        out[(key[0], key[1])][key[2]] = total
    return out


def build_profile_files(traces: dict[tuple[str, str], dict[int, np.ndarray]]) -> dict[str, dict[str, object]]:
    files: dict[str, dict[str, object]] = {}
    for (model, type_name), by_batch in sorted(traces.items()):
        body = summarize_samples(by_batch)
        f = files.setdefault(
            model,
            {
                "model": model,
                "unit": "ms",
                "source": "Kairos (HPDC'23) latency traces: compute + load, largest of 100 dropped",
                "quantile_levels": QUANTILE_LEVELS,
                "types": {},
            },
        )
        types = f["types"]
        assert isinstance(types, dict)
        types[type_name] = body
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kairos-import-profiles", description=plain(__doc__.split("\n\n")[0]),
        epilog=plain(__doc__.split("\n\n", 2)[2]),
    )  # fmt: skip
    parser.add_argument("--traces", type=Path, default=Path("../shared/kairos-data/latency-traces.tar.gz"),
                        metavar="TAR_GZ", help="the paper's raw traces (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=PROFILE_DIR, metavar="DIR",
                        help="where the profile files go, one per model (default: the shipped profiles)")
    args = parser.parse_args(argv)
    if not args.traces.is_file():
        parser.error(f"--traces: no such file {args.traces}")
    files = build_profile_files(read_traces(args.traces))
    args.out.mkdir(parents=True, exist_ok=True)
    for model, body in files.items():
        path = args.out / f"{model}.json"
        path.write_bytes(orjson.dumps(body) + b"\n")
        print(f"wrote {path} ({len(body['types'])} instance types)")  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
