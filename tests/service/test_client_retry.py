"""The client's retry of a lost answer, through a real TCP relay that delivers a request to a real
`lbdn api` and drops the server's answer: the client asks again with the same Idempotency-Key and
the service makes one sweep and one job, not two."""

from __future__ import annotations

import socket
import threading

import httpx
import pytest

from client.http import ApiError, Client
from tests.service.conftest import Service, make_settings

TOY = {"model": "Toy", "layer": "Sandwich", "epochs": 2}


class DroppingRelay:
    """127.0.0.1:port -> the server. The first `drops` connections deliver the request but close the
    client's side as soon as the server's answer starts (the answer is lost on the way back); later
    ones relay both ways."""

    def __init__(self, upstream: str, drops: int) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream, self.drops, self.dropped = (host, int(port)), drops, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            drop = self.dropped < self.drops
            self.dropped += drop
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, drop), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, drop: bool) -> None:
        try:
            while data := src.recv(65536):
                if drop:  # the server answered: the client never sees it
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("retry")
    (tmp / "logs").mkdir()
    svc = Service(make_settings(tmp), tmp / "logs")  # no worker: what is made stays queued
    yield svc
    svc.close()


@pytest.mark.parametrize("drops", [1, 2])
def test_a_lost_answer_is_asked_again_and_makes_nothing_twice(service, drops: int) -> None:
    relay = DroppingRelay(service.url, drops)
    direct = httpx.Client(base_url=service.url, timeout=60)
    try:
        before = len(direct.get("/v1/sweeps").json()["items"])
        with Client(relay.url) as c:
            sweep = c.create_sweep({"name": f"lost-{drops}", "spec": TOY, "grid": {"gamma": [1, 2]}})
            job = c.submit({"kind": "train", "spec": {**TOY, "epochs": 3 + drops}})
        assert relay.dropped == drops  # the answers were really lost (each try a connection of its own)
        sweeps = direct.get("/v1/sweeps").json()["items"]
        assert len(sweeps) == before + 1 and sweeps[0]["id"] == sweep["id"] and len(sweep["jobs"]) == 2
        named = direct.get("/v1/jobs", params={"name": f"lost-{drops}", "limit": 200}).json()["items"]
        assert sorted(j["id"] for j in named) == sorted(j["job_id"] for j in sweep["jobs"])
        again = [j for j in direct.get("/v1/jobs", params={"limit": 200}).json()["items"] if j["id"] == job["id"]]
        assert len(again) == 1 and again[0]["spec"]["epochs"] == 3 + drops
    finally:
        relay.close()
        direct.close()


def test_a_refused_connection_is_reported_as_unreachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once this closes
    with Client(f"http://127.0.0.1:{port}") as c, pytest.raises(ApiError) as e:
        c.submit({"kind": "train", "spec": TOY})
    assert e.value.status == 0 and "cannot reach the lbdn service" in e.value.detail
