"""The models one gateway serves: each name maps to its service (its own core, with its
dispatcher, policy, estimator and instance clients, and its prober)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from gateway.config import ModelConfig
from gateway.core import GatewayCore
from gateway.errors import ModelNotFound
from gateway.pool import HealthProber
from gateway.protocol.limits import quote


@dataclass(slots=True)
class ModelService:
    config: ModelConfig
    core: GatewayCore
    prober: HealthProber | None = None


class ModelRegistry:
    def __init__(self, services: list[ModelService] | None = None) -> None:
        self._services: dict[str, ModelService] = {}
        for service in services or ():
            self.add(service)

    def add(self, service: ModelService) -> None:
        name = service.config.name
        if name in self._services:
            raise ValueError(f"model {name!r} is registered twice")
        self._services[name] = service

    def get(self, model: str) -> ModelService:
        """The model's service; ``ModelNotFound`` naming the served models otherwise."""
        service = self._services.get(model)
        if service is None:
            served = ", ".join(repr(n) for n in self._services)
            raise ModelNotFound(f"unknown model {quote(model)}: this gateway serves {served}")
        return service

    def __contains__(self, model: object) -> bool:
        return model in self._services

    def __iter__(self) -> Iterator[ModelService]:
        return iter(self._services.values())

    def __len__(self) -> int:
        return len(self._services)

    @property
    def names(self) -> list[str]:
        return list(self._services)
