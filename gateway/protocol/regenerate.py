"""Regenerate the V2 gRPC stubs: ``python -m gateway.protocol.regenerate``.

The stubs register in a private descriptor pool: Triton's client (and KServe's) register the
same ``inference.*`` names in protobuf's default pool, and a process that imports both would
fail with "duplicate symbol". The wire format is unchanged.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def main() -> None:
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{HERE}", f"--python_out={HERE}",
         f"--pyi_out={HERE}", f"--grpc_python_out={HERE}", "grpc_predict_v2.proto"],
        check=True, cwd=HERE,
    )
    in_private_pool(HERE / "grpc_predict_v2_pb2.py")
    grpc_file = HERE / "grpc_predict_v2_pb2_grpc.py"
    text = grpc_file.read_text()
    text = re.sub(r"^import grpc_predict_v2_pb2 as", "from . import grpc_predict_v2_pb2 as", text, flags=re.M)
    grpc_file.write_text(text)


def in_private_pool(pb2: Path) -> None:
    """Make a generated ``_pb2.py`` register its messages in a pool of its own."""
    text = pb2.read_text()
    text = text.replace(
        "_sym_db = _symbol_database.Default()",
        "_sym_db = _symbol_database.Default()\nPOOL = _descriptor_pool.DescriptorPool()",
    )
    text = text.replace("_descriptor_pool.Default().AddSerializedFile", "POOL.AddSerializedFile")
    pb2.write_text(text)


if __name__ == "__main__":
    main()
