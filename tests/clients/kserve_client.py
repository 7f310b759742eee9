"""Send one batch through the KServe SDK (kserve's InferenceRESTClient and InferenceGRPCClient)
and print what came back as JSON. Runs in the KServe SDK's own virtual environment (the SDK pins
protobuf 5 and tritonclient's gRPC client 6, so the two cannot share one): it imports nothing
of this project.

    echo '{"http": "http://HOST:PORT", "grpc": "HOST:PORT", "model": "M", "data": "x.npy"}' |
        python kserve_client.py

(Arguments come on stdin: importing kserve parses the command line for its own model server.)

Prints {"rest_json": [...], "rest_binary": [...], "grpc": [...], "parameters": {...}}: each
list is the first output's values, flattened; "parameters" are the gRPC response's, each as
{field of the protobuf oneof: value}.
"""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig


def request(model: str, x: np.ndarray, binary: bool) -> InferRequest:
    inp = InferInput(name="x", shape=list(x.shape), datatype="FP64")
    inp.set_data_from_numpy(x, binary_data=binary)
    return InferRequest(model_name=model, infer_inputs=[inp], request_id="kserve-sdk")


async def main() -> None:
    args = json.load(sys.stdin)
    model = args["model"]
    x = np.load(args["data"])
    out: dict[str, object] = {}
    rest = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))
    for name, binary in (("rest_json", False), ("rest_binary", True)):
        resp = await rest.infer(args["http"], request(model, x, binary), model_name=model)
        out[name] = resp.outputs[0].as_numpy().ravel().tolist()
    await rest.close()
    client = InferenceGRPCClient(args["grpc"], retries=0, timeout=30)
    resp = await client.infer(request(model, x, True))
    out["grpc"] = resp.outputs[0].as_numpy().ravel().tolist()
    # Protobuf parameters as {"int64_param": 4888}: which field of the oneof carries each.
    out["parameters"] = {
        k: {v.WhichOneof("parameter_choice"): getattr(v, v.WhichOneof("parameter_choice"))}
        for k, v in (resp.parameters or {}).items()
    }
    await client.close()
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    asyncio.run(main())
