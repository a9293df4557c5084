"""api.shedding.ShedLoad on its own: a request with no place within its wait gets 503 + Retry-After;
probes, certify and event streams pass by; a place given back in time lets a waiter in."""

from __future__ import annotations

import anyio
import httpx
from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send

from api.metrics import ServiceMetrics
from api.shedding import ShedLoad, counted


def test_counted_paths() -> None:
    assert counted("/v1/jobs") and counted("/v1/jobs/abc") and counted("/") and counted("/v1/models/import")
    for path in ("/healthz", "/readyz", "/metrics", "/v1/models/abc/certify", "/v1/jobs/abc/events"):
        assert not counted(path), path


def _run(max_wait_s: float, scenario, shed_expected: int = 1) -> None:
    """`scenario(client, shed, entered, release)` against ShedLoad(1 place) over an app whose /slow
    request holds its place until `release` is set."""

    async def main() -> None:
        entered, release = anyio.Event(), anyio.Event()

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["path"] == "/slow":
                entered.set()
                await release.wait()
            if scope["path"] == "/stream":  # an answer started, its body held back until `release`
                await send({"type": "http.response.start", "status": 200, "headers": []})
                entered.set()
                await release.wait()
                return await send({"type": "http.response.body", "body": b"ok"})
            await PlainTextResponse("ok")(scope, receive, send)

        shed = ShedLoad(app, places=1, max_wait_s=max_wait_s, metrics=ServiceMetrics(None))  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=shed), base_url="http://t") as client:
            await scenario(client, shed, entered, release)
            assert (await client.get("/v1/jobs")).status_code == 200  # the places were given back
        assert shed.metrics.shed._value.get() == shed_expected

    anyio.run(main)


def test_no_place_within_the_wait_is_503_and_probes_pass_by() -> None:
    async def scenario(client: httpx.AsyncClient, shed: ShedLoad, entered: anyio.Event, release: anyio.Event) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.get, "/slow")
            await entered.wait()
            r = await client.get("/v1/jobs")  # the one place is held until `release`: it cannot get in
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert r.headers["content-type"] == "application/problem+json"
            assert "LBDN_MAX_QUEUE_MS (50 ms)" in r.json()["detail"]
            for path in ("/healthz", "/v1/models/m/certify", "/v1/jobs/j/events"):
                assert (await client.get(path)).status_code == 200, path
            release.set()

    _run(0.05, scenario)


def test_a_place_given_back_within_the_wait_lets_the_waiter_in() -> None:
    async def scenario(client: httpx.AsyncClient, shed: ShedLoad, entered: anyio.Event, release: anyio.Event) -> None:
        answers: list[int] = []

        async def waiter() -> None:
            answers.append((await client.get("/v1/jobs")).status_code)

        async with anyio.create_task_group() as tg:
            tg.start_soon(client.get, "/slow")
            await entered.wait()
            tg.start_soon(waiter)
            while shed.places.statistics().tasks_waiting == 0:  # the waiter is queued for the place
                await anyio.sleep(0)
            release.set()
        assert answers == [200]

    _run(60.0, scenario, shed_expected=0)


def test_an_answer_that_started_gives_its_place_back() -> None:
    async def scenario(client: httpx.AsyncClient, shed: ShedLoad, entered: anyio.Event, release: anyio.Event) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.get, "/stream")
            await entered.wait()
            assert (await client.get("/v1/jobs")).status_code == 200  # while /stream still sends its body
            release.set()

    _run(0.5, scenario, shed_expected=0)


def test_the_openapi_document_names_the_503_where_load_is_shed(tmp_path) -> None:
    from api.main import create_app
    from core.settings import Settings

    paths = create_app(Settings(_env_file=None, home=tmp_path)).openapi()["paths"]
    poll = paths["/v1/jobs/{job_id}"]["get"]["responses"]["503"]
    assert "load shedding" in poll["description"] and "Retry-After" in poll["headers"]
    assert "503" not in paths["/healthz"]["get"]["responses"]
    assert "503" not in paths["/v1/jobs/{job_id}/events"]["get"]["responses"]
