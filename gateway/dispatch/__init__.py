"""The dispatcher core shared by the live gateway and the simulator."""

from gateway.dispatch.dispatcher import Dispatch, Dispatcher, InstanceState, OverloadControl
from gateway.dispatch.query import Query

__all__ = ["Dispatch", "Dispatcher", "InstanceState", "OverloadControl", "Query"]
