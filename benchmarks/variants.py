"""Build the shipped variant set: three variants of one classifier with real accuracy and real,
different latencies, served by MLServer and profiled by ``kairos-profile``.

    python -m benchmarks.variants [--samples 30] [--max-batch 256]
    python -m benchmarks.variants --replot    # the plots again from the stored profiles

Random forests of 8, 64 and 512 trees on scikit-learn's handwritten digits (1,797 8x8 images,
shipped with scikit-learn), trained on 70% and scored on the 30% held out (stratified, seed 0).
Each variant is served by one MLServer process on this machine and profiled over HTTP at
concurrency 1; the instance type is this machine, labelled ``dev-2vcpu``. Writes
``gateway/profiles/data/variants/digits.json`` (accuracies, how they were measured) and one
profile file per variant in ``variants/profiles/`` (with its plot). Progress on stderr.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.mlserver import start_mlserver, write_sklearn_model
from gateway.profiles import cli as profile_cli
from gateway.profiles.variants import VARIANTS_DIR

SET_NAME = "digits"
INSTANCE_TYPE = "dev-2vcpu"
TREES = (8, 64, 512)
TEST_FRACTION = 0.3
SEED = 0


@dataclass(frozen=True)
class Trained:
    name: str
    trees: int
    accuracy: float
    estimator: object


def train() -> list[Trained]:
    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SEED, stratify=y
    )
    out = []
    for trees in TREES:
        model = RandomForestClassifier(n_estimators=trees, random_state=SEED, n_jobs=1).fit(x_train, y_train)
        accuracy = float((model.predict(x_test) == y_test).mean())
        out.append(Trained(f"{SET_NAME}-rf{trees}", trees, round(accuracy, 4), model))
        print(f"trained {out[-1].name}: held-out accuracy {accuracy:.4f}", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.variants", description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=30)
    p.add_argument("--max-batch", type=int, default=256)
    p.add_argument("--out", type=Path, default=VARIANTS_DIR)
    p.add_argument("--replot", action="store_true",
                   help="only redraw each variant's plot from its stored profile (measures nothing)")
    args = p.parse_args(argv)
    if args.replot:
        for trees in TREES:
            profile = args.out / "profiles" / f"{SET_NAME}-rf{trees}.json"
            profile_cli.plot_stored(profile, INSTANCE_TYPE, profile.with_suffix(".png"))
            print(f"wrote {profile.with_suffix('.png')}")
        return 0
    variants = train()
    args.out.mkdir(parents=True, exist_ok=True)
    inputs = [{"name": "x", "datatype": "FP64", "shape": [-1, 64]}]
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        for v in variants:
            write_sklearn_model(repo, v.name, v.estimator, inputs=inputs)
        server = start_mlserver(repo, [v.name for v in variants], Path(tmp) / "mlserver.log")
        try:
            for v in variants:
                started = time.monotonic()
                code = profile_cli.main(
                    ["--url", server.http_url, "--model", v.name, "--type", INSTANCE_TYPE,
                     "--out", str(args.out / "profiles" / f"{v.name}.json"), "--samples", str(args.samples),
                     "--max-batch", str(args.max_batch)]
                )
                if code:
                    raise SystemExit(f"profiling {v.name} failed ({code}): {server.log()[-2000:]}")
                print(f"profiled {v.name} in {time.monotonic() - started:.0f} s", file=sys.stderr)
        finally:
            server.stop()
    doc = {
        "name": SET_NAME,
        "task": "handwritten digit classification (scikit-learn's load_digits, 10 classes)",
        "accuracy": f"held-out {TEST_FRACTION:.0%} stratified split, seed {SEED}",
        "instance_type": INSTANCE_TYPE,
        "measured": f"{datetime.date.today().isoformat()}, MLServer on {platform.machine()} "
        f"(2 shared vCPUs), kairos-profile over HTTP at concurrency 1, {args.samples} samples per batch",
        "command": "python -m benchmarks.variants",
        "variants": [
            {"model": v.name, "trees": v.trees, "accuracy": v.accuracy, "profile": f"profiles/{v.name}.json"}
            for v in variants
        ],
    }
    (args.out / f"{SET_NAME}.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out / f'{SET_NAME}.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
