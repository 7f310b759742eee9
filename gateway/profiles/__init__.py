"""Latency profiles: per (model, instance type) service-time distributions over a batch grid."""

from gateway.profiles.catalogue import Catalogue, InstanceType, load_catalogue
from gateway.profiles.profile import LatencyProfile, ProfileSet, load_profiles

__all__ = [
    "Catalogue",
    "InstanceType",
    "LatencyProfile",
    "ProfileSet",
    "load_catalogue",
    "load_profiles",
]
