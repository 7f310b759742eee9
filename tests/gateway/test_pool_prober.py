"""The readiness prober while instances come and go: a round survives a client closed under it,
and a result is reported only to the client it probed."""

from __future__ import annotations

import asyncio

from gateway.backend import InstanceClient
from gateway.backend.negotiation import ServerInfo
from gateway.pool import HealthProber, probe
from tests.helpers.hanging_grpc import hanging_grpc_server


class Ready:
    """A client whose probe answers ``answer`` once ``release`` is set."""

    def __init__(self, answer: bool = True) -> None:
        self.answer = answer
        self.release = asyncio.Event()
        self.release.set()
        self.server: ServerInfo | None = None

    async def ready(self, model: str, timeout_s: float) -> bool:
        await self.release.wait()
        return self.answer

    async def close(self) -> None:
        pass


async def test_a_round_survives_a_grpc_client_closed_under_its_probe() -> None:
    server, port = await hanging_grpc_server()
    hung = InstanceClient("gone", None, f"127.0.0.1:{port}", backend_protocol="grpc")
    clients = {"gone": hung, "ok": Ready()}
    results: list[tuple[str, bool]] = []
    prober = HealthProber(clients, "m", 1.0, lambda n, r: results.append((n, r)))
    try:
        round_ = asyncio.ensure_future(prober.probe_all())
        await asyncio.sleep(0.2)  # the probe of "gone" is under way
        del clients["gone"]  # removed, its client closed, as the core does
        await hung.close()
        await asyncio.wait_for(round_, 5)  # no CancelledError out of the round
        assert results == [("ok", True)]  # nothing reported for the removed instance
        await prober.probe_all()
        assert results[-1] == ("ok", True)
    finally:
        await server.stop(None)


async def test_the_prober_task_goes_on_after_a_round_that_failed() -> None:
    class Broken(Ready):
        async def ready(self, model: str, timeout_s: float) -> bool:
            raise RuntimeError("a bug in a client")

    results: list[tuple[str, bool]] = []
    prober = HealthProber({"b": Broken(), "ok": Ready()}, "m", 0.05, lambda n, r: results.append((n, r)))
    prober.start()
    await asyncio.sleep(0.2)
    await prober.stop()
    assert results.count(("b", False)) >= 2 and results.count(("ok", True)) >= 2


async def test_a_result_goes_only_to_the_client_it_probed() -> None:
    """x answers ready, then is removed and added again with a new client before the round ends:
    the old result must not put the new x, never probed, in rotation."""
    old, new = Ready(True), Ready(False)
    old.release.clear()
    clients = {"x": old}
    results: list[tuple[str, bool]] = []
    prober = HealthProber(clients, "m", 1.0, lambda n, r: results.append((n, r)))
    round_ = asyncio.ensure_future(prober.probe_all())
    await asyncio.sleep(0.01)
    clients["x"] = new  # removed and added again meanwhile
    old.release.set()
    await round_
    assert results == []
    await prober.probe_all()
    assert results == [("x", False)]


async def test_a_probe_passes_its_own_cancellation_on() -> None:
    hanging = Ready()
    hanging.release.clear()
    task = asyncio.ensure_future(probe(hanging, "m", 1.0))
    await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.sleep(0)
    assert task.cancelled()


async def test_an_instance_that_keeps_failing_is_probed_less_often_until_it_answers() -> None:
    """Every round probed thousands of unreachable instances an admin API client had added: each
    that keeps failing is now probed every 2, then every 4 rounds; once ready, every round again."""
    down, up = Ready(answer=False), Ready()
    clients = {"down": down, "up": up}
    probed: list[tuple[int, str]] = []
    prober = HealthProber(clients, "m", 1.0, lambda n, r: probed.append((k, n)))
    for k in range(1, 15):
        if k == 11:
            down.answer = True
        await prober.probe_all()
    assert [k for k, n in probed if n == "up"] == list(range(1, 15))
    assert [k for k, n in probed if n == "down"] == [1, 2, 4, 8, 12, 13, 14]  # ready from 12: every round
    down.answer = False
    k = 15
    await prober.probe_all()
    k = 16
    await prober.probe_all()  # two failures in a row: next probed at round 18
    del clients["down"]
    clients["down"] = Ready(answer=False)  # a new instance of the same name starts afresh
    k = 17
    await prober.probe_all()
    assert [k for k, n in probed if n == "down"][-3:] == [15, 16, 17]
