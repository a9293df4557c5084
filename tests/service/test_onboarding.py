"""The traps a new user met on the way in (issue 23): the first key hiding the open mode's jobs,
/docs without internet, a slow and noisy stop of `lbdn serve`, an evaluation whose data set is not
there, the Toy's units."""

from __future__ import annotations

import re
import socket
import subprocess
import sys

from tests.service.conftest import settings_env

TOY = {"model": "Toy", "layer": "Sandwich", "dataset": "square_wave", "gamma": 1.0, "epochs": 1}


def _keys(settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "api.cli", "keys", *args],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_first_key_warns_about_open_mode_jobs_and_adopts_them(client) -> None:
    settings = client.app.state.services.settings
    made = client.post("/v1/jobs", json={"kind": "train", "spec": TOY})
    assert made.status_code == 201, made.text
    sweep = client.post("/v1/sweeps", json={"spec": TOY, "grid": {"gamma": [1, 2]}}).json()

    first = _keys(settings, "create", "--tenant", "acme")
    assert first.returncode == 0, first.stderr
    assert "WARNING: 3 jobs and 1 sweep were made in the open mode (tenant 'local')" in first.stderr
    assert "lbdn keys adopt-local --tenant acme" in first.stderr
    acme = {"Authorization": f"Bearer {first.stdout.strip().splitlines()[-1]}"}
    assert client.get("/v1/jobs", headers=acme).json()["items"] == []  # hidden, as the warning says

    moved = _keys(settings, "adopt-local", "--tenant", "acme")
    assert moved.returncode == 0 and "moved 3 jobs and 1 sweep" in moved.stdout, moved.stdout + moved.stderr
    assert {j["id"] for j in client.get("/v1/jobs", headers=acme).json()["items"]} == {
        made.json()["id"],
        *(j["job_id"] for j in sweep["jobs"]),
    }
    assert client.get(f"/v1/sweeps/{sweep['id']}", headers=acme).status_code == 200
    # nothing left in the open mode: the next key is made without a warning; --adopt-local in one step
    again = _keys(settings, "create", "--tenant", "beta", "--adopt-local")
    assert again.returncode == 0 and "WARNING" not in again.stderr and "moved 0 jobs" in again.stdout


def test_docs_reference_only_local_assets(client) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    urls = re.findall(r"""(?:src|href)=["']([^"']+)""", page.text) + re.findall(r"url: '([^']+)'", page.text)
    assert len(urls) == 4 and all(u.startswith("/") and not u.startswith("//") for u in urls), urls
    for url in urls:
        assert client.get(url).status_code == 200, url
    csp = page.headers["content-security-policy"]
    assert "script-src 'self' 'sha256-" in csp and "http" not in csp  # this origin and the inline script
    assert "Apache License" in client.get("/docs/assets/LICENSE").text
    assert client.get("/docs/assets/..%2F..%2Fmain.py").status_code == 404
    assert client.get("/redoc").status_code == 404  # ReDoc would load from a CDN


def test_docs_render_in_a_browser_without_network(service_factory, tmp_path) -> None:
    """Chromium here reaches no network beyond loopback: Swagger UI must come from the service."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.service.test_dashboard import _browser

    svc = service_factory("embedded", "sqlite")
    browser = _browser(tmp_path)
    try:
        browser.get(f"{svc.url}/docs")
        WebDriverWait(browser, 120).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".opblock")) > 10)
        assert "lbdn-service" in browser.find_element(By.CSS_SELECTOR, ".title").text
        errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not [m for m in errors if "Content Security Policy" in m or "Failed to load" in m], errors
    finally:
        browser.quit()


def test_a_clean_stop_of_serve_is_quiet(tmp_path) -> None:
    """SIGTERM to an idle `lbdn serve`: the worker's warm shutdown ends it (no kill after a wait) and
    no ERROR line is printed (its idle pool child used to be logged as killed by signal 15)."""
    import os
    import signal
    import time

    from tests.service.test_cli import _env

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "serve", "--port", str(port)],
            env=_env(tmp_path),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            end = time.monotonic() + 300  # a bound against a hang, not a speed requirement
            while " ready." not in log.read_text() or "Uvicorn running" not in log.read_text():
                assert proc.poll() is None and time.monotonic() < end, log.read_text()
                time.sleep(0.2)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=300)
    text = log.read_text()
    assert proc.returncode == 0 and text.rstrip().endswith("lbdn: stopped"), text[-3000:]
    assert "ERROR" not in text and "killing it" not in text and "Traceback" not in text, text[-3000:]
    worker_pid = int(re.search(r"worker pid (\d+)", text).group(1))
    try:
        os.killpg(worker_pid, 0)
        raise AssertionError("the worker's process group outlived serve")
    except ProcessLookupError:
        pass


KWL = {"model": "KWL", "layer": "Sandwich", "scale": "small", "dataset": "cifar10", "gamma": 1.0}


def test_evaluate_without_its_dataset_is_refused_at_submission(client, trained_model) -> None:
    model = trained_model(client.app, "local", KWL)
    ask = {"kind": "evaluate", "model_id": model, "attack": {"n_examples": 4}}
    data = client.app.state.services.settings.datasets_dir
    # no data dir at all: this API cannot know what the workers have (the worker will say)
    assert client.post("/v1/jobs", json=ask, headers={"Idempotency-Key": "a"}).status_code == 201
    data.mkdir(parents=True)
    refused = client.post("/v1/jobs", json=ask)
    assert refused.status_code == 422, refused.text
    detail = refused.json()["detail"]
    assert str(data) in detail and "lbdn download cifar10" in detail and "cifar-10-batches-py" in detail
    (data / "cifar-10-batches-py").mkdir()
    assert client.post("/v1/jobs", json=ask).status_code == 201


def test_a_worker_without_the_dataset_names_the_directory_and_the_command(tmp_path, settings_for) -> None:
    from core.states import JobKind
    from core.store import init_db, jobs, transaction
    from worker.context import TaskContext
    from worker.tasks import run_evaluate, run_train

    ctx = TaskContext(settings_for(tmp_path, lipschitz_restarts=0))
    init_db(ctx.engine)
    with transaction(ctx.sessions()) as s:
        train = jobs.create_job(s, tenant="local", kind=JobKind.train, spec={**KWL, "epochs": 1})[0]
    assert run_train(ctx, train.id) == "failed"
    ctx.settings.job_dir(train.id).mkdir(parents=True, exist_ok=True)
    (ctx.settings.job_dir(train.id) / "model.safetensors").write_bytes(b"weights")  # only its presence counts
    with transaction(ctx.sessions()) as s:
        ev = jobs.create_job(s, tenant="local", kind=JobKind.evaluate, spec=KWL, params={}, model_id=train.id)[0]
    assert run_evaluate(ctx, ev.id) == "failed"
    with ctx.sessions()() as s:
        for job_id in (train.id, ev.id):
            error = jobs.get_job(s, None, job_id).error
            assert f"not in the data directory {ctx.settings.datasets_dir}" in error, error
            assert "lbdn download cifar10" in error and "load_data" not in error, error


def test_certify_tables_use_the_models_units() -> None:
    """An image model's radii in 1/255 pixel units with classes; the Toy's in x's own units, with its
    output f(x) and the side of the 0.5 threshold it is certified on (never "class 1", never x 255)."""
    from rich.console import Console

    from client.render import certify_table

    def text(answer: dict) -> str:
        console = Console(width=200, record=True)
        console.print(certify_table(answer, ["a", "b"]))
        return console.export_text()

    bound = {"gamma": 1.0, "kind": "gamma (single output)", "used": 1.0}
    toy = {"model_id": "job_toy", "lipschitz_bound": bound, "results": [
        {"index": 0, "predicted": 1, "class_name": None, "logits": [0.8], "margin": 0.3, "radius_pixel": 0.3},
        {"index": 1, "predicted": 0, "class_name": None, "logits": [0.1], "margin": 0.4, "radius_pixel": 0.4},
    ]}  # fmt: skip
    out = text(toy)
    assert "output f(x)" in out and "certified radius (in x)" in out and "x 255" not in out
    assert "0.8000 (> 0.50)" in out and "0.1000 (<= 0.50)" in out and "0.300" in out and "76.5" not in out
    image = {"model_id": "job_img", "lipschitz_bound": {**bound, "kind": "sqrt2*gamma"}, "results": [
        {"index": 0, "predicted": 3, "class_name": "cat", "logits": [0.0] * 10, "margin": 0.5, "radius_pixel": 0.1},
    ]}  # fmt: skip
    out = text(image)
    assert "3 cat" in out and "certified radius (/255)" in out and "25.500" in out


def test_toy_model_page_in_a_browser(service_factory, trained_model, tmp_path) -> None:
    """The Toy's certify table shows f(x) and the threshold side, radii in x's units, and a caption
    that says so (it said 1/255 pixel units while showing raw values)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from api.main import create_app
    from tests.service.test_dashboard import _browser

    svc = service_factory("embedded", "sqlite")
    toy = trained_model(create_app(svc.settings), "local", {"model": "Toy", "layer": "Sandwich", "gamma": 1.0})
    browser = _browser(tmp_path)
    try:
        wait = WebDriverWait(browser, 120, poll_frequency=0.2)
        browser.get(f"{svc.url}/#/models/{toy}")
        wait.until(lambda b: b.find_elements(By.ID, "toy-certify"))[0].click()
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "tr.cert-row")) == 3)
        page = browser.find_element(By.TAG_NAME, "body").text
        assert "distances in the input x itself" in page and "1/255" not in page and "output f(x)" in page
        for row in browser.find_elements(By.CSS_SELECTOR, "tr.cert-row"):
            cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
            assert re.fullmatch(r"-?\d+\.\d{4} \((>|≤) 0\.50\)", cells[2]), cells
            assert "/255" not in cells[4] and "/255" not in cells[5], cells
    finally:
        browser.quit()


def test_move_tenant_on_sqlite_and_postgres(store) -> None:
    """The open mode's jobs and sweeps move whole; a job whose Idempotency-Key the new tenant already
    used stays (the key is unique per tenant)."""
    from core.store import jobs, keys, sweeps, transaction

    with transaction(store) as s:
        plain = jobs.create_job(s, tenant="local", kind="train", spec=TOY)[0]
        keyed = jobs.create_job(s, tenant="local", kind="train", spec=TOY, idempotency_key="k")[0]
        clash = jobs.create_job(s, tenant="local", kind="train", spec=TOY, idempotency_key="taken")[0]
        jobs.create_job(s, tenant="acme", kind="train", spec=TOY, idempotency_key="taken")
        swept = jobs.create_job(s, tenant="local", kind="train", spec=TOY)[0]
        sweep = sweeps.create_sweep(
            s, tenant="local", name="s", preset=None, request={}, evaluate=None, trained=[(swept, {"gamma": 1.0})]
        )
    with transaction(store) as s:
        assert keys.tenant_holdings(s, "local") == (4, 1)
        assert keys.move_tenant(s, "local", "acme") == (3, 1)
    with store() as s:
        assert {j.id for j in jobs.list_jobs(s, "local")} == {clash.id}
        assert {plain.id, keyed.id} <= {j.id for j in jobs.list_jobs(s, "acme")}
        assert sweeps.get_sweep(s, "acme", sweep.id) is not None
