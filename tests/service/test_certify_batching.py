"""Concurrent certify requests are batched (api.batcher) without changing any answer.

A real uvicorn server on a socket (module scope) with real certify processes. Batches are made
deterministic by the batcher's own knobs, set on the live app: a wait long enough never to end
by itself and `max_requests` equal to the requests sent, so a batch starts exactly when all of
them are queued; every wait in a test is on an event (requests queued, a batch recorded).
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import struct
import threading

import httpx
import numpy as np
import pytest

from tests.service.conftest import make_settings, save_trained_model
from tests.test_upload_fuzz import split_idat_png
from tests.waiting import wait_until

pytestmark = pytest.mark.slow
TOY = {"model": "Toy", "layer": "Sandwich", "gamma": 1.0, "epochs": 1}
TOY2 = {"model": "Toy", "layer": "Aol", "gamma": 2.0, "epochs": 1}
KWL = {"model": "KWL", "layer": "Sandwich", "scale": "small", "dataset": "cifar10", "epochs": 1, "gamma": 2.0}
FOREVER = 600.0  # a batch wait that never ends by itself within a test


class Served:
    def __init__(self, app, url: str, keys: dict[str, str], models: dict[str, str]) -> None:
        self.app, self.url, self.keys, self.models = app, url, keys, models
        self.batcher = app.state.services.certify_batcher

    def post(self, tenant: str, model: str, **kw) -> httpx.Response:
        return httpx.post(self._cert(model), headers=self._auth(tenant, kw), timeout=120, **kw)

    def _cert(self, model: str) -> str:
        return f"{self.url}/v1/models/{self.models[model]}/certify"

    def _auth(self, tenant: str, kw: dict) -> dict[str, str]:
        return {"authorization": f"Bearer {self.keys[tenant]}", **kw.pop("headers", {})}

    def concurrently(self, calls: list[tuple[str, str, dict]]) -> list[httpx.Response]:
        """Each (tenant, model, httpx kwargs) sent at once; the responses in the same order."""

        async def go() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=200)) as c:
                return await asyncio.gather(
                    *(c.post(self._cert(m), headers=self._auth(t, dict(kw)), **_body(kw)) for t, m, kw in calls)
                )

        return asyncio.run(go())

    def batching(self, requests: int) -> None:
        """The next batch starts when `requests` requests of one key are queued (and not before)."""
        self.batcher.max_requests, self.batcher.wait_s, self.batcher.adaptive = requests, FOREVER, False
        self.batcher.wake()

    def unbatched(self) -> None:
        self.batcher.max_requests, self.batcher.wait_s = 1, 0.0
        self.batcher.wake()

    def queued(self) -> int:
        return sum(len(q) for q in list(self.batcher._queues.values()))

    def live(self) -> int:
        """Queued requests whose clients are still connected (as far as the batcher has seen)."""
        return sum(not w.future.done() for q in list(self.batcher._queues.values()) for w in q)


def _body(kw: dict) -> dict:
    return {k: v for k, v in kw.items() if k != "headers"}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import uvicorn

    from api.main import create_app
    from core.store import keys, transaction

    tmp = tmp_path_factory.mktemp("batching")
    settings = make_settings(tmp, certify_slots_per_tenant=100, certify_slots_total=200, certify_concurrency=2)
    app = create_app(settings)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_until("the server up", lambda: _healthy(url))  # (its lifespan made the tables)
    models = {
        "a1": save_trained_model(app, "a", TOY),
        "a2": save_trained_model(app, "a", TOY2),
        "b1": save_trained_model(app, "b", TOY),
        "kwl": save_trained_model(app, "a", KWL, mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.3)),
        "gone": save_trained_model(app, "a", TOY),
    }
    with transaction(app.state.services.sessions) as s:
        secrets = {t: keys.create_key(s, t)[1] for t in ("a", "b")}
    yield Served(app, url, secrets, models)
    server.should_exit = True
    thread.join(60)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def _close(a: float, b: float) -> bool:
    return a == b or abs(a - b) <= 1e-12 * max(abs(a), abs(b))


def _same_answer(batched: dict, alone: dict) -> None:
    assert batched["lipschitz_bound"] == alone["lipschitz_bound"]
    assert batched["model_id"] == alone["model_id"] and batched["input_shape"] == alone["input_shape"]
    assert [r["index"] for r in batched["results"]] == list(range(len(alone["results"])))
    for got, want in zip(batched["results"], alone["results"], strict=True):
        assert got["predicted"] == want["predicted"] and got["class_name"] == want["class_name"]
        for field in ("radius", "radius_pixel", "margin"):
            assert (got[field] is None) == (want[field] is None), field
            if got[field] is not None:
                assert _close(got[field], want[field]), (field, got[field], want[field])
        assert all(_close(g, w) for g, w in zip(got["logits"], want["logits"], strict=True))


def _toy_inputs(seed: int, n: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"json": {"inputs": rng.uniform(-2, 2, size=(n, 1)).tolist(), "scale": "model"}}


def _npy(x: np.ndarray) -> dict:
    buf = io.BytesIO()
    np.save(buf, x)
    return {"content": buf.getvalue(), "headers": {"content-type": "application/x-npy"}}


def test_batched_answers_equal_unbatched(served):
    rng = np.random.default_rng(1)
    calls = [("a", "a1", _toy_inputs(i, 1 + i % 3)) for i in range(6)]
    calls += [("a", "kwl", _npy(rng.uniform(0, 1, size=(1 + i % 2, 3, 32, 32)))) for i in range(4)]
    served.unbatched()
    alone = [served.post(t, m, **dict(kw)) for t, m, kw in calls]
    assert all(r.status_code == 200 for r in alone), [r.text for r in alone]

    before = len(served.batcher.batches)
    served.batching(6)  # each batch starts full: the 6 Toy requests, then the 4 KWL ones
    toy, kwl = calls[:6], calls[6:]
    got = served.concurrently(toy)
    served.batching(4)
    got += served.concurrently(kwl)
    assert all(r.status_code == 200 for r in got), [r.text for r in got]
    batches = list(served.batcher.batches)[before:]
    assert [n for _, n in batches] == [6, 4]  # each set of concurrent requests was one batch
    for batched, single in zip(got, alone, strict=True):
        _same_answer(batched.json(), single.json())


def test_models_and_tenants_never_share_a_batch(served):
    calls = [(t, m, _toy_inputs(i, 2)) for i in range(4) for t, m in (("a", "a1"), ("a", "a2"), ("b", "b1"))]
    served.unbatched()
    alone = [served.post(t, m, **dict(kw)).json() for t, m, kw in calls]
    before = len(served.batcher.batches)
    served.batching(4)  # a batch starts when 4 requests of ONE key wait: only same-key requests fill it
    got = served.concurrently(calls)
    assert all(r.status_code == 200 for r in got), [r.text for r in got]
    batches = list(served.batcher.batches)[before:]
    assert sorted((k.model_id, k.tenant, n) for k, n in batches) == sorted(
        (served.models[m], t, 4) for t, m in (("a", "a1"), ("a", "a2"), ("b", "b1"))
    )
    for batched, single in zip(got, alone, strict=True):
        _same_answer(batched.json(), single)


def test_a_malformed_request_fails_only_itself(served):
    bad = [
        {"content": b'{"inputs": [[NaN]], "scale": "model"}', "headers": {"content-type": "application/json"}},
        {"json": {"inputs": [[1.0, 2.0]], "scale": "model"}},  # wrong shape
        {"content": b'{"inputs": [[1.0]', "headers": {"content-type": "application/json"}},  # cut off
        {"content": b'{"inputs": ' + b"[" * 900 + b"]" * 900 + b"}", "headers": {"content-type": "application/json"}},
        {"json": {"inputs": [[0.5]], "scale": "meters"}},
    ]
    good = [_toy_inputs(10 + i, 2) for i in range(5)]
    served.unbatched()
    alone = [served.post("a", "a1", **dict(kw)).json() for kw in good]
    mixed = [x for pair in zip(good, bad, strict=True) for x in pair]
    served.batching(len(mixed))
    got = served.concurrently([("a", "a1", kw) for kw in mixed])
    for r in got[1::2]:
        assert r.status_code == 422, r.text
        assert r.headers["content-type"] == "application/problem+json"
    for r, single in zip(got[0::2], alone, strict=True):
        assert r.status_code == 200, r.text
        _same_answer(r.json(), single)


def test_a_disconnect_leaves_the_others_answers_intact(served):
    good = [_toy_inputs(20 + i, 3) for i in range(3)]
    served.unbatched()
    alone = [served.post("a", "a1", **dict(kw)).json() for kw in good]
    dropped = served.batcher.dropped
    served.batching(4)
    queued = served.queued()
    # one client sends its whole request, waits until it is queued, and hangs up before its batch forms
    gone = _raw_post(served, "a1", json.dumps({"inputs": [[0.25]], "scale": "model"}).encode())
    wait_until("the request queued", lambda: served.queued() > queued)
    live = served.live()
    gone.close()
    wait_until("the hang-up seen by the batcher", lambda: served.live() < live)
    served.batching(3)  # the 3 that remain make the batch; the gone one is found gone and dropped
    got = served.concurrently([("a", "a1", kw) for kw in good])
    assert served.batcher.dropped == dropped + 1
    for r, single in zip(got, alone, strict=True):
        assert r.status_code == 200, r.text
        _same_answer(r.json(), single)

    # and one that hangs up while its batch is being computed: the others still get their answers
    before = len(served.batcher.batches)
    served.batching(4)
    late = _raw_post(served, "a1", json.dumps({"inputs": [[0.75]], "scale": "model"}).encode())
    wait_until("the request queued", lambda: served.queued() >= 1)

    async def run_and_hang_up() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as c:
            posts = [
                asyncio.ensure_future(c.post(served._cert("a1"), headers=served._auth("a", {}), json=kw["json"]))
                for kw in good
            ]
            while len(served.batcher.batches) == before:  # the batch is formed: now hang up
                await asyncio.sleep(0.005)
            late.close()
            return list(await asyncio.gather(*posts))

    got = asyncio.run(run_and_hang_up())
    for r, single in zip(got, alone, strict=True):
        assert r.status_code == 200, r.text
        _same_answer(r.json(), single)
    served.unbatched()
    assert served.post("a", "a1", **_toy_inputs(99, 1)).status_code == 200  # and it keeps serving


def test_a_waiting_batch_is_one_task_not_a_spin(served):
    """While a batch waits for its requests, nothing else is started for its key (a task that found
    the key being gathered used to start the next one at once: a spin on the API's event loop)."""
    served.batching(2)
    started, queued = served.batcher.started, served.queued()
    first = _raw_post(served, "a1", json.dumps({"inputs": [[0.5]], "scale": "model"}).encode())
    wait_until("the first request queued", lambda: served.queued() > queued)
    second = served.post("a", "a1", **_toy_inputs(31, 1))  # completes the batch of 2
    assert second.status_code == 200, second.text
    assert first.recv(65536).startswith(b"HTTP/1.1 200")
    first.close()
    assert served.batcher.started == started + 1
    served.unbatched()


def _raw_post(served: Served, model: str, body: bytes, tenant: str = "a") -> socket.socket:
    host, port = served.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=120)
    head = (
        f"POST /v1/models/{served.models[model]}/certify HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {served.keys[tenant]}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    return sock


# ---- issue 22: limits and the 500s found by abuse ----------------------------------------------------
def test_every_certify_request_holds_a_slot(served):
    slots = served.app.state.services.certify_slots
    limit = slots.per_tenant
    slots.per_tenant = 2
    try:
        served.batching(3)  # the two that get slots wait for a third that never comes
        first = [_raw_post(served, "a1", json.dumps({"inputs": [[0.1]], "scale": "model"}).encode()) for _ in "xy"]
        wait_until("both queued", lambda: served.queued() >= 2)
        refused = served.post("a", "a1", **_toy_inputs(1, 1))
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["retry-after"]) >= 1 and "LBDN_CERTIFY_SLOTS_PER_TENANT" in refused.text
        other = _raw_post(served, "b1", json.dumps({"inputs": [[0.1]], "scale": "model"}).encode(), tenant="b")
        wait_until("another tenant's request queued, not refused", lambda: served.queued() >= 3)
        served.unbatched()
        for sock in [*first, other]:  # their answers come, their slots are freed
            assert sock.recv(64).startswith(b"HTTP/1.1 200"), "queued request not answered"
            sock.close()
    finally:
        slots.per_tenant = limit
    wait_until("slots freed", lambda: slots.active == 0)
    assert served.post("a", "a1", **_toy_inputs(1, 1)).status_code == 200


def _npy_with_header(header: str) -> bytes:
    text = header.encode("latin1")
    text += b" " * (63 - (10 + len(text)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + b"\x00" * 64


@pytest.mark.parametrize(
    "name,kw",
    [
        (
            "inputs nested 900 deep",
            {"json": {"inputs": json.loads("[" * 900 + "]" * 900), "scale": "model"}},
        ),
        ("npy shape of 9,000 '-'", _npy(np.zeros(1)) | {"content": _npy_with_header("{'shape': (" + "-" * 9000)}),
        ("npy shape of 9,000 '+'", _npy(np.zeros(1)) | {"content": _npy_with_header("{'shape': (" + "+" * 9000)}),
        ("npy header ending mid-dict", _npy(np.zeros(1)) | {"content": _npy_with_header("{'descr': '<f8', 'sha")}),
    ],
)
def test_malformed_bodies_are_422_not_500(served, name, kw):
    served.unbatched()
    r = served.post("a", "a1", **kw)
    assert r.status_code == 422, (name, r.status_code, r.text[:300])
    assert r.headers["content-type"] == "application/problem+json"


def test_png_with_a_broken_chunk_type_is_422(served):
    served.unbatched()
    files = [("files", ("x.png", split_idat_png(b"\x00\x01\x02\x03"), "image/png"))]
    r = served.post("a", "kwl", files=files)
    assert r.status_code == 422, r.text[:300]
    assert "x.png" in r.json()["detail"]


def test_deleting_a_model_with_queued_requests_answers_them_cleanly(served):
    served.batching(1000)  # nothing starts: all 60 wait in the queue
    model = served.models["gone"]
    queued = served.queued()

    async def go() -> tuple[list[httpx.Response], httpx.Response]:
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=100)) as c:
            posts = [
                asyncio.ensure_future(c.post(served._cert("gone"), headers=served._auth("a", {}), **_toy_inputs(i, 1)))
                for i in range(60)
            ]
            while served.queued() < queued + 60:
                await asyncio.sleep(0.01)
            deleted = await c.delete(f"{served.url}/v1/jobs/{model}", headers=served._auth("a", {}))
            served.unbatched()  # now the queued batch goes to a certify process
            return list(await asyncio.gather(*posts)), deleted

    answers, deleted = asyncio.run(go())
    assert deleted.status_code == 204, deleted.text
    codes = sorted({r.status_code for r in answers})
    assert set(codes) <= {404, 409, 410}, [(r.status_code, r.text[:200]) for r in answers if r.status_code >= 500]
    assert all(r.headers["content-type"] == "application/problem+json" for r in answers)


def test_certify_is_for_the_input_as_given_not_its_float32_rounding():
    """api.uploads.decode keeps float64 values exactly (issue 21)."""
    from api.uploads import RawInputs, decode, parse_json

    x = 0.1 + 2.0**-40  # not a float32 value
    raw = parse_json(
        RawInputs(json_body=json.dumps({"inputs": [[x]], "scale": "model"}).encode()), max_numbers=8, max_depth=8
    )
    out = decode(raw, (1,), is_image=False, max_inputs=4, max_pixels=1)
    assert out.dtype == np.float64 and out[0, 0] == x
    buf = io.BytesIO()
    np.save(buf, np.array([[x]]))
    assert decode(RawInputs(npy=buf.getvalue()), (1,), is_image=False, max_inputs=4, max_pixels=1)[0, 0] == x
