"""V2 backend clients: forward a routed request to one instance as bytes, over gRPC or HTTP."""

from gateway.backend.base import BackendReply, InstanceFailure, RoutedRequest
from gateway.backend.client import Backend, InstanceClient

__all__ = ["Backend", "BackendReply", "InstanceClient", "InstanceFailure", "RoutedRequest"]
