"""``kairos-plan``: the real ``serve`` process over loopback HTTP (status codes, error bodies, not
wedged after bad requests) and the command line's exit codes and output."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from allocator.planner.cli import main
from allocator.planner.service import MAX_BODY_BYTES
from benchmarks.processes import Process, free_port

REPO = Path(__file__).resolve().parents[3]

REQUEST: dict[str, Any] = {
    "types": [
        {"name": "g4dn.xlarge", "price_per_hour": 0.526, "accelerator": True, "available": 5},
        {"name": "c5n.2xlarge", "price_per_hour": 0.432, "available": 6},
        {"name": "r5n.large", "price_per_hour": 0.149, "available": 17},
        {"name": "t3.xlarge", "price_per_hour": 0.1664, "available": 15},
    ],
    "models": [{"name": "rm2", "classes": [{"name": "default", "target_ms": 350}], "load": 100}],
    "objective": {"kind": "min_cost"},
}


def _request(**changes: Any) -> dict[str, Any]:
    raw = copy.deepcopy(REQUEST)
    raw.update(changes)
    return raw


def _infeasible() -> dict[str, Any]:
    """dien's batches cannot be served within 1 ms on any type."""
    return _request(models=[{"name": "dien", "classes": [{"name": "default", "target_ms": 1}], "load": 10}])


# --- the service ---------------------------------------------------------------------------------


class Service:
    def __init__(self, url: str, process: Process) -> None:
        self.url = url
        self.process = process

    def call(
        self, method: str, path: str, body: bytes | None = None, timeout: float = 30.0
    ) -> tuple[int, Any]:
        """(status, the JSON body) of one request."""
        req = urllib.request.Request(
            self.url + path,
            data=body,
            method=method,
            headers={"Content-Type": "application/json"} if body is not None else {},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, json.loads(exc.read())

    def plan(self, raw: Any) -> tuple[int, Any]:
        return self.call("POST", "/plan", json.dumps(raw).encode())


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    port = free_port()
    stderr_path = tmp_path_factory.mktemp("plan-serve") / "serve.stderr"
    with open(stderr_path, "w") as err:
        popen = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "allocator.planner.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--max-time",
                "10",
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=err,
            text=True,
        )
    process = Process(popen, stderr_path, "")
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            if popen.poll() is not None:
                pytest.fail(f"kairos-plan serve exited with {popen.returncode}: {process.stderr()}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"kairos-plan serve did not answer /health within 30 s: {process.stderr()}")
            time.sleep(0.1)
        yield Service(url, process)
    finally:
        process.stop(timeout_s=10)


def test_health(service: Service) -> None:
    assert service.call("GET", "/health") == (200, {"status": "ok"})


def test_a_valid_request_gets_a_plan(service: Service) -> None:
    status, body = service.plan(REQUEST)
    assert status == 200, body
    for key in ("allocations", "classes", "cost_per_hour", "solver"):
        assert key in body
    assert body["allocations"] and all(a["model"] == "rm2" and a["count"] >= 1 for a in body["allocations"])
    assert body["cost_per_hour"] > 0
    assert body["cost_per_hour"] == pytest.approx(
        sum(
            a["count"] * t["price_per_hour"]
            for a in body["allocations"]
            for t in REQUEST["types"]
            if t["name"] == a["type"]
        ),
        abs=1e-5,
    )
    [outcome] = body["classes"]
    assert (outcome["model"], outcome["service_class"], outcome["load_qps"]) == ("rm2", "default", 100.0)
    assert outcome["dropped"] == 0.0 and outcome["within_target"] >= 0.99
    assert body["solver"]["status"] == "optimal"


def test_a_refined_plan_over_http(service: Service) -> None:
    status, body = service.plan(_request(refine={"queries": 2000, "seed": 1}))
    assert status == 200, body
    assert body["refinement"]["simulations"] >= 1 and body["classes"][0]["basis"] == "simulation"
    status, body = service.plan(_request(refine={"queries": 10}))
    assert status == 400 and "refine.queries" in body["error"]


@pytest.mark.parametrize(
    "body",
    [b"{", b"not json", b"", b"\xff\xfe{}", b'{"types": NaN}'],
    ids=["truncated", "text", "empty", "bad-utf8", "nan"],
)
def test_malformed_json_is_400(service: Service, body: bytes) -> None:
    status, answer = service.call("POST", "/plan", body)
    assert status == 400
    assert set(answer) == {"error"} and answer["error"].startswith("body: not valid JSON")


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (_request(types=[{**REQUEST["types"][0], "price_per_hour": -1}]), "types[0].price_per_hour"),
        (
            _request(models=[{**REQUEST["models"][0], "classes": [{"name": "default", "target_ms": 0}]}]),
            "models[0].classes[0].target_ms",
        ),
        (_request(objective={"kind": "cheapest"}), "objective.kind"),
        (_request(time_limit_s=601), "time_limit_s"),
        (_request(frob=1), "frob"),
        ([REQUEST], "request"),
    ],
    ids=["price", "target", "objective", "time-limit", "unknown", "not-an-object"],
)
def test_a_bad_field_is_400_naming_it(service: Service, raw: Any, field: str) -> None:
    status, answer = service.plan(raw)
    assert status == 400
    assert answer["error"].startswith(field + ":"), answer


def test_an_infeasible_request_is_422_with_the_reason(service: Service) -> None:
    status, answer = service.plan(_infeasible())
    assert status == 422
    assert "no type serves dien's batch" in answer["error"]


def test_a_body_over_8_mib_is_413(service: Service) -> None:
    # Valid JSON, so only its size can be the reason.
    body = json.dumps({**REQUEST, "padding": "x" * (MAX_BODY_BYTES + 1024)}).encode()
    assert len(body) > MAX_BODY_BYTES
    status, answer = service.call("POST", "/plan", body)
    assert status == 413
    assert "error" in answer


def test_a_malformed_inline_profile_is_400(service: Service) -> None:
    model = {
        "name": "rm2",
        "classes": [{"name": "default", "target_ms": 350}],
        "load": 100,
        "variants": [
            {
                "name": "v1",
                "profiles": {
                    "quantile_levels": 0.5,
                    "types": {"g4dn.xlarge": {"batch": [1], "mean": [5], "quantiles": [[4]]}},
                },
            }
        ],
    }
    try:
        status, answer = service.plan(_request(models=[model]))
    except json.JSONDecodeError:  # aiohttp's plain-text 500 page
        status, answer = 500, None
    assert status == 400
    assert answer["error"].startswith("models[0].variants[0].profiles")


def test_the_service_is_not_wedged_after_bad_requests(service: Service) -> None:
    for _ in range(3):
        assert service.call("POST", "/plan", b"{")[0] == 400
        assert service.plan(_request(types=[]))[0] == 400
        assert service.plan(_infeasible())[0] == 422
    status, body = service.plan(REQUEST)
    assert status == 200 and body["allocations"]
    assert service.call("GET", "/health") == (200, {"status": "ok"})
    assert service.process.returncode is None  # still running


def test_only_post_plans(service: Service) -> None:
    status, body = _status_only(service, "GET", "/plan")
    assert status == 405 and "error" in json.loads(body)  # JSON, as every other answer
    status, body = _status_only(service, "GET", "/nothing-here")
    assert status == 404 and "error" in json.loads(body)


@pytest.mark.parametrize(("encoding", "body"), [("gzip", b"not gzip"), ("deflate", b"\x00\x01")])
def test_a_body_that_does_not_decode_as_its_content_encoding_is_400(
    service: Service, encoding: str, body: bytes
) -> None:
    req = urllib.request.Request(service.url + "/plan", data=body, method="POST",
                                 headers={"Content-Type": "application/json", "Content-Encoding": encoding})
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=10)
    with exc.value as answer:
        assert answer.code == 400
        if encoding == "gzip":  # a deflate header this broken is refused by aiohttp's parser, in text
            assert "Content-Encoding" in json.loads(answer.read())["error"]
    assert service.call("GET", "/health") == (200, {"status": "ok"})


def _status_only(service: Service, method: str, path: str) -> tuple[int, bytes]:
    req = urllib.request.Request(service.url + path, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


# --- the command line ----------------------------------------------------------------------------


def _write(tmp_path: Path, raw: Any, name: str = "request.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(raw))
    return str(path)


def test_cli_prints_a_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([_write(tmp_path, REQUEST)]) == 0
    out = capsys.readouterr().out
    assert "objective min_cost" in out and "$/hour" in out
    assert "model  variant  type" in out and "target ms" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("rm2 ")]
    assert any(row[2] in {t["name"] for t in REQUEST["types"]} and int(row[3]) >= 1 for row in rows)


def test_cli_prints_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([_write(tmp_path, REQUEST), "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["allocations"] and body["classes"][0]["load_qps"] == 100.0


def test_cli_refine_trims_in_the_simulator_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    small = _request(models=[{"name": "rm2", "classes": [{"name": "default", "target_ms": 350}], "load": 10.4}])
    assert main([_write(tmp_path, small), "--json"]) == 0
    solved = json.loads(capsys.readouterr().out)
    assert "refinement" not in solved and solved["classes"][0]["basis"] == "queueing model"
    assert main([_write(tmp_path, small), "--json", "--refine"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["refinement"]["moves"] == ["rm2: -1 r5n.large"] and body["refinement"]["simulations"] >= 2
    assert body["cost_per_hour"] < solved["cost_per_hour"]
    assert body["classes"][0]["basis"] == "simulation" and body["classes"][0]["within_target"] >= 0.99
    assert main([_write(tmp_path, small), "--refine"]) == 0
    out = capsys.readouterr().out
    assert "refined in the simulator: 1 move(s) (rm2: -1 r5n.large)" in out and "(sim.)" in out


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (_request(types=5), "types: expected a list"),
        (_request(objective={"kind": "min_cost", "fairness": 2}), "objective.fairness"),
    ],
    ids=["types", "fairness"],
)
def test_cli_a_malformed_request_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], raw: Any, message: str
) -> None:
    assert main([_write(tmp_path, raw)]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.err.startswith("kairos-plan: error:")
    assert captured.out == ""


def test_cli_a_missing_or_non_json_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "nope.json")]) == 2
    assert "nope.json" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main([str(bad)]) == 2
    assert "error" in capsys.readouterr().err


def test_cli_an_infeasible_request_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([_write(tmp_path, _infeasible())]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("kairos-plan: no plan:") and "dien" in captured.err
    assert captured.out == ""


def test_cli_from_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--from-config", str(REPO / "config.json"), "--load", "50", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["allocations"] and all(a["count"] >= 1 for a in body["allocations"])
    assert sum(c["load_qps"] for c in body["classes"]) == pytest.approx(50.0)


def test_cli_from_config_writes_the_request(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    written = tmp_path / "written.json"
    assert (
        main(["--from-config", str(REPO / "config.json"), "--load", "50", "--write-request", str(written)])
        == 0
    )
    capsys.readouterr()
    # The request it wrote plans the same as the config did.
    assert main([str(written), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["allocations"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--from-config", "config.json"], [], ["serve", "--port", "70000"], ["serve", "--workers", "0"],
        ["--from-config", "config.json", "--load", "50", "--max", "g4dn.xlarg=0"],
        ["request.json", "--max", "g4dn.xlarge=1"],
        ["request.json", "--load", "5000", "--mix", "fixed:64"],
    ],
    ids=["no-load", "nothing", "port", "workers", "max-of-a-type-not-planned", "max-with-a-request-file",
         "load-with-a-request-file"],
)
def test_cli_bad_arguments_exit_2(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error" in err
    if "--max" in argv:
        assert "--max" in err and ("g4dn.xlarg'" in err or "--from-config" in err)
    if "--load" in argv and "request.json" in argv:
        assert "--load, --mix: only with --from-config" in err


def test_a_solve_that_overruns_is_stopped_and_the_next_plan_is_served(tmp_path: Path) -> None:
    """A refinement whose first simulation alone takes seconds overruns a 0.5 s time limit: its
    child process is stopped at the limit plus the grace (503), and the next plan is answered at
    once (a thread could not be stopped: it held the only worker)."""
    import asyncio

    from aiohttp.test_utils import TestClient, TestServer

    from allocator.planner.service import ServiceOptions, make_app
    from gateway.profiles import load_profiles

    slow = _request(time_limit_s=0.5, refine={"queries": 200_000, "max_simulations": 1})

    async def main() -> tuple[int, dict[str, Any], float, int, int]:
        app = make_app(load_profiles(), ServiceOptions(workers=1, max_time_s=0.5, grace_s=1.0))
        async with TestClient(TestServer(app)) as client:
            started = time.monotonic()
            resp = await client.post("/plan", json=slow)
            stopped = resp.status, await resp.json(), time.monotonic() - started
            health = (await client.get("/health")).status
            resp = await client.post("/plan", json=_request())
            return (*stopped, health, resp.status)

    status, doc, waited, health, after = asyncio.run(main())
    assert status == 503 and "the solve was stopped" in doc["error"], doc
    assert waited < 1.5 + 5.0  # the limit, the grace, and a process start
    assert health == 200 and after == 200


def test_a_client_that_leaves_stops_its_solve(service: Service) -> None:
    """Clients that gave up left their solves running (up to --max-time each): the next ones
    waited, or were refused as busy. `kairos-plan serve` cancels a handler whose client left, and
    with it the solve's process, freeing the worker."""
    slow = json.dumps(_request(time_limit_s=10.0, refine={"queries": 200_000, "max_simulations": 20})).encode()
    with pytest.raises(TimeoutError):  # a 10 s solve (20 s alone on this machine; stopped at 10)
        service.call("POST", "/plan", slow, timeout=1.5)
    started = time.monotonic()
    assert service.call("POST", "/plan", json.dumps(_request()).encode())[0] == 200
    assert time.monotonic() - started < 6.0  # not the 8.5 s the abandoned solve had left


def test_a_body_that_does_not_arrive_is_408_and_frees_its_place() -> None:
    """Stalled uploads held their places (1,100 were all still held after 30 s)."""
    import asyncio

    from aiohttp.test_utils import TestClient, TestServer

    from allocator.planner.service import ServiceOptions, make_app
    from gateway.profiles import load_profiles

    async def main() -> tuple[bytes, int]:
        app = make_app(load_profiles(), ServiceOptions(workers=1, queue=0, body_timeout_s=0.5))
        async with TestClient(TestServer(app)) as client:
            reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
            writer.write(b"POST /plan HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000\r\n\r\n{\"types\":")  # and nothing more
            answer = await asyncio.wait_for(reader.read(200), 5.0)
            writer.close()
            resp = await client.post("/plan", json=_request())  # its place is free again
            return answer, resp.status

    answer, status = asyncio.run(main())
    assert answer.startswith(b"HTTP/1.1 408") and status == 200


def _many_curves(models: int) -> dict[str, Any]:
    """``models`` models of 5 variants and 8 prioritised classes: thousands of capacity curves."""
    variants = [{"name": f"v{i}", "profile": p} for i, p in enumerate(("rm2", "ncf", "dien", "wnd", "mtwnd"))]

    def classes(i: int) -> list[dict[str, Any]]:  # each model its own targets: curves of their own
        return [{"name": f"c{k}", "target_ms": round(300.0 + 7 * i + 53.3 * k, 1),
                 "attainment": round(0.9 + 1e-5 * i + 0.0111 * k, 5), "priority": k} for k in range(8)]

    return {"types": [{"name": "g4dn.xlarge", "price_per_hour": 0.526, "accelerator": True},
                      {"name": "c5n.2xlarge", "price_per_hour": 0.432}, {"name": "r5n.large", "price_per_hour": 0.149},
                      {"name": "t3.xlarge", "price_per_hour": 0.1664}],
            "models": [{"name": f"m{i}", "variants": variants, "classes": classes(i),
                        "load": {f"c{k}": 1 for k in range(8)}} for i in range(models)],
            "objective": {"kind": "min_cost"}, "time_limit_s": 60}


def test_a_plan_past_the_memory_it_may_take_is_413() -> None:
    """A 183 KB request took 1.6 GB in its solve: each solve's address space is capped."""
    import asyncio

    from aiohttp.test_utils import TestClient, TestServer

    from allocator.planner.service import ServiceOptions, make_app
    from gateway.profiles import load_profiles

    async def main() -> tuple[int, dict[str, Any], int]:
        app = make_app(load_profiles(), ServiceOptions(max_memory_bytes=500 << 20))
        async with TestClient(TestServer(app)) as client:
            resp = await client.post("/plan", json=_many_curves(40))
            answer = resp.status, await resp.json()
            return (*answer, (await client.post("/plan", json=_request())).status)

    status, doc, after = asyncio.run(main())
    assert status == 413 and "needs more than 0.488281 GiB of memory" in doc["error"], doc
    assert after == 200


def test_a_timeout_under_the_services_cap_does_not_say_raise_time_limit_s() -> None:
    import asyncio

    from aiohttp.test_utils import TestClient, TestServer

    from allocator.planner.service import ServiceOptions, make_app
    from gateway.profiles import load_profiles

    slow = _request(time_limit_s=60.0, refine={"queries": 200_000, "max_simulations": 1})

    async def main() -> tuple[int, dict[str, Any]]:
        app = make_app(load_profiles(), ServiceOptions(workers=1, max_time_s=0.5, grace_s=1.0))
        async with TestClient(TestServer(app)) as client:
            resp = await client.post("/plan", json=slow)
            return resp.status, await resp.json()

    status, doc = asyncio.run(main())
    assert status == 503 and "this service's cap on time_limit_s" in doc["error"], doc
