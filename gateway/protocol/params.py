"""Names of the V2 request and response ``parameters`` this project reads or writes, in one place.

The gateway, the emulated servers and the load generator all agree on these, so each name is
spelled once here. Also the one way to write a Python value into a protobuf parameter map.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

import orjson

from gateway.protocol import grpc_predict_v2_pb2 as pb

# Request: the per-request QoS (ms) a client may set; the gateway's default applies otherwise.
QOS_PARAMETER = "qos_ms"
# Request: "serve" asks for a late answer rather than a deadline error when the gateway sheds.
LATE_PARAMETER = "late_queries"

# Response, added by the gateway: the instance chosen, the time the query waited in the
# gateway's queue, and the gateway's end-to-end time.
PARAM_INSTANCE = "gateway_instance"
PARAM_QUEUE_MS = "gateway_queue_ms"
PARAM_E2E_MS = "gateway_e2e_ms"

# Response, reported by an instance (kairos-servers): its name and type, the time the query
# waited there, its service time (drawn) and the time it measured.
INSTANCE_PARAM = "instance"
INSTANCE_TYPE_PARAM = "instance_type"
INSTANCE_QUEUE_MS = "queue_ms"
SERVICE_MS = "service_ms"
OBSERVED_MS = "observed_ms"

# Names an instance may report its own service time under (kairos-servers' first).
SERVICE_MS_KEYS = (SERVICE_MS, "service_time_ms")
# Names a response may carry the serving instance under; the gateway's wins.
INSTANCE_KEYS = (PARAM_INSTANCE, INSTANCE_PARAM)

ParamValue = str | bool | int | float
_INT64_MAX = 2**63 - 1


def set_proto_parameters(target: MutableMapping[str, pb.InferParameter], params: Mapping[str, Any]) -> None:
    """Write JSON parameter values into a protobuf parameter map (the oneof by type; integers
    past int64 as uint64; null left out; lists and objects as their JSON text)."""
    for key, value in params.items():
        if value is None:
            continue
        p = target[key]
        if isinstance(value, bool):
            p.bool_param = value
        elif isinstance(value, int):
            if value > _INT64_MAX:
                p.uint64_param = value
            else:
                p.int64_param = value
        elif isinstance(value, float):
            p.double_param = value
        elif isinstance(value, str):
            p.string_param = value
        else:
            p.string_param = orjson.dumps(value).decode()
