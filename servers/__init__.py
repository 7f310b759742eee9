"""Emulated V2 inference instances and the ``kairos-servers`` launcher.

instance: profile replay, one query at a time, FIFO (transport-free); http, grpc: the V2 front
ends of one instance; pool: plan ports and serve a group of instances on one event loop;
workers: spread groups over processes; ready: readiness probes; cli: ``kairos-servers``.
"""

