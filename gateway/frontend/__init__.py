"""Front ends: thin V2 adapters (HTTP/REST, gRPC) over ``gateway.core.GatewayCore``."""

from gateway.protocol.translate import BINARY_EXTENSION

# What both front ends answer to server metadata, and how long they wait for an instance's
# model metadata.
SERVER_NAME = "kairos-gateway"
SERVER_VERSION = "0.1.0"
METADATA_TIMEOUT_S = 2.0
# Protocol extensions the gateway takes from clients (listed the same on both protocols).
EXTENSIONS = (BINARY_EXTENSION,)
