"""Front ends: thin V2 adapters (HTTP/REST, gRPC) over ``gateway.core.GatewayCore``."""
