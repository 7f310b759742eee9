"""Regenerate the ext_proc message classes: ``python -m gateway.epp.regenerate`` (needs the dev
extra, grpcio-tools).

As the V2 stubs (``gateway.protocol.regenerate``), they register in a private descriptor pool:
nothing another package registers (Envoy's own stubs, OpenTelemetry's) can clash with them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gateway.protocol.regenerate import in_private_pool

HERE = Path(__file__).parent


def main() -> None:
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{HERE}", f"--python_out={HERE}", f"--pyi_out={HERE}",
         "ext_proc.proto"],
        check=True, cwd=HERE,
    )  # fmt: skip
    in_private_pool(HERE / "ext_proc_pb2.py")


if __name__ == "__main__":
    main()
