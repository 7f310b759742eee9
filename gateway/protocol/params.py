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
# The request's service class (one of the model's classes; none: its default class).
CLASS_PARAMETER = "class"
# A model variant the request must be served by (one of the model's; none: any).
VARIANT_PARAMETER = "variant"
PARAM_VARIANT = "gateway_variant"  # response: the variant that served the request (models with several)

# Response, added by the gateway: the instance chosen, the time the query waited in the
# gateway's queue, and the gateway's end-to-end time. Times are whole microseconds (int64):
# KServe's and MLServer's protobufs have no double parameter, only bool, int64 and string.
PARAM_INSTANCE = "gateway_instance"
PARAM_QUEUE_US = "gateway_queue_us"
PARAM_E2E_US = "gateway_e2e_us"

# Response, reported by an instance (kairos-servers): its name and type, the time the query
# waited there, its service time (drawn) and the time it measured, in microseconds.
INSTANCE_PARAM = "instance"
INSTANCE_TYPE_PARAM = "instance_type"
INSTANCE_QUEUE_US = "queue_us"
SERVICE_US = "service_us"
OBSERVED_US = "observed_us"

# Names an instance may report its own service time under, with each one's unit in ms
# (kairos-servers' first).
SERVICE_TIME_KEYS = ((SERVICE_US, 1e-3), ("service_ms", 1.0), ("service_time_ms", 1.0))
# Names a response may carry the serving instance under; the gateway's wins.
INSTANCE_KEYS = (PARAM_INSTANCE, INSTANCE_PARAM)

ParamValue = str | bool | int | float
_INT64_MAX = 2**63 - 1


def to_us(ms: float) -> int:
    """A time in ms as whole microseconds, the unit of every time parameter written."""
    return round(ms * 1000.0)


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
