"""The dashboard's research pages in a real headless Chromium against a real `lbdn api` and worker:
a finished 2x2 Toy sweep (the paper's table1, two layers x two gammas, 2 epochs) on its sweep page,
three of its runs on the compare page, the paper page of table1 with that sweep's report, and the
job page's facts (lr, seed, loss, verified bound, sweep link; an import's model link).

Jobs are waited for by polling the API, page content by WebDriverWait polling the DOM; the time
limits only bound a hung run. Screenshots go to $LBDN_TEST_ARTIFACTS/dashboard (default
test-artifacts/); the README's are copies of them in docs/screenshots/.
"""

from __future__ import annotations

import json
import statistics
import threading

import httpx
import pytest

from tests.conftest import SHARED
from tests.service.test_dashboard import ARTIFACTS, LONG, _browser, close_browser, report_failure

# compare.js PALETTE: the first three runs' colours
RUN_COLOURS = [(0x1F, 0x77, 0xB4), (0xD6, 0x27, 0x28), (0x2C, 0xA0, 0x2C)]
COUNT_COLOUR = """const c = arguments[0].querySelector('canvas'), [r, g, b] = arguments[1];
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4)
    if (d[i + 3] > 200 && Math.abs(d[i] - r) < 30 && Math.abs(d[i + 1] - g) < 30 && Math.abs(d[i + 2] - b) < 30) n++;
  return n;"""


def _finished_sweep(url: str, headers: dict, body: dict) -> dict:
    made = httpx.post(f"{url}/v1/sweeps", json=body, headers=headers, timeout=60)
    assert made.status_code == 201, made.text
    sweep_id = made.json()["id"]
    tick = threading.Event()
    for _ in range(LONG * 5):  # a bound on a hung run; each pass waits 0.2 s for the next poll
        sw = httpx.get(f"{url}/v1/sweeps/{sweep_id}", headers=headers, timeout=60).json()
        if sw["status"] != "running":
            return sw
        tick.wait(0.2)
    raise AssertionError(f"sweep {sweep_id} still running: {sw['counts']}")


def _value(cell) -> float | None:
    raw = cell.get_attribute("data-value")
    return None if raw is None else float(raw)


@pytest.mark.slow
def test_research_pages_in_a_browser(service_factory, add_key, tmp_path):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from api.main import create_app

    driver = _browser(tmp_path)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # a Lipschitz estimate after training: table1 reports tightness (lower bound / gamma)
    svc = service_factory("redis", "sqlite", lipschitz_restarts=2)
    svc.worker()
    store_app = create_app(svc.settings)
    try:
        secret = add_key(store_app, "acme")
        auth = {"Authorization": f"Bearer {secret}"}
        wait = WebDriverWait(driver, LONG, poll_frequency=0.2, ignored_exceptions=[StaleElementReferenceException])
        find, find_all = driver.find_element, driver.find_elements
        body = {"preset": "table1", "epochs": 2, "only": {"layer": ["Sandwich", "SLL"], "gamma": [1, 5]}}
        sw = _finished_sweep(svc.url, auth, body)
        assert sw["status"] == "succeeded" and sw["counts"] == {"succeeded": 4}, sw
        train = [j for j in sw["jobs"] if j["role"] == "train"]
        driver.get(svc.url + "/")
        driver.execute_script("sessionStorage.setItem('lbdn.apiKey', arguments[0])", secret)
        driver.refresh()  # a load with the key: no key dialog left open from the keyless one
        driver.get_log("browser")  # the keyless first load's 401s are expected; what follows must be clean

        _sweep_page(driver, wait, find, find_all, svc.url, sw, train, Select, By)
        _compare_page(driver, wait, find, find_all, svc.url, auth, train[:3], By)
        _paper_page(driver, wait, find, find_all, svc.url, train, By)
        _job_pages(driver, wait, svc.url, auth, sw, train[0], By)

        logs = driver.get_log("browser")
        assert not [e for e in logs if "Content Security Policy" in e.get("message", "")], logs
        assert not [e for e in logs if e.get("level") == "SEVERE"], logs
    except Exception:
        report_failure(driver, "pages-failure.png")
        raise
    finally:
        close_browser(driver, store_app, tmp_path)


def _sweep_page(driver, wait, find, find_all, url, sw, train, Select, By) -> None:
    driver.get(f"{url}/#/sweeps")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f'tr[data-sweep="{sw["id"]}"]'))
    driver.get(f"{url}/#/sweeps/{sw['id']}")
    wait.until(lambda d: d.find_element(By.ID, "sweep-status").get_attribute("data-status") == "succeeded")
    assert find(By.CSS_SELECTOR, '[data-count="succeeded"]').text == "4 succeeded"
    assert not find(By.ID, "cancel-sweep").is_displayed()  # nothing left to cancel
    assert len(find_all(By.CSS_SELECTOR, "#points-table tbody tr")) == 4
    Select(find(By.ID, "heat-metric")).select_by_value("tightness")
    Select(find(By.ID, "heat-x")).select_by_value("gamma")
    Select(find(By.ID, "heat-y")).select_by_value("layer")
    wait.until(lambda d: d.find_element(By.ID, "heatmap").get_attribute("data-metric") == "tightness")
    cells = find_all(By.CSS_SELECTOR, "#heatmap td[data-value]")
    assert len(cells) == 4  # 2 layers x 2 gammas, one run each
    expected = sorted(j["result"]["tightness"] for j in train)
    assert sorted(_value(c) for c in cells) == pytest.approx(expected, rel=1e-12)
    driver.set_window_size(1400, 1000)
    driver.save_screenshot(str(ARTIFACTS / "sweep-page.png"))


def _compare_page(driver, wait, find, find_all, url, auth, three, By) -> None:
    driver.get(f"{url}/#/jobs")
    for j in three:  # the list re-renders every 2 s: ticks are kept, a stale click is retried
        wait.until(lambda d, j=j: d.find_element(By.CSS_SELECTOR, f'input[data-pick="{j["job_id"]}"]').click() or True)
    wait.until(lambda d: d.find_element(By.ID, "compare-picked").text == "Compare 3 runs")
    find(By.ID, "compare-picked").click()
    wait.until(lambda d: "#/compare/" in d.current_url)
    wait.until(lambda d: d.find_element(By.ID, "overlay-test_loss").get_attribute("data-series") == "3")
    chart = find(By.ID, "overlay-test_loss")
    assert chart.get_attribute("data-points") == "2"
    for colour in RUN_COLOURS:
        drawn = driver.execute_script(COUNT_COLOUR, chart, list(colour))
        assert drawn > 30, f"a run's test-loss curve is not drawn ({drawn} pixels of {colour})"
    rows = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#compare-table tbody tr"))
    assert [r.get_attribute("data-job") for r in rows] == [j["job_id"] for j in three]
    for row in rows:
        job = httpx.get(f"{url}/v1/jobs/{row.get_attribute('data-job')}", headers=auth, timeout=60).json()
        for key in ("test_loss", "tightness", "lipschitz_lower_bound", "params"):
            assert _value(row.find_element(By.CSS_SELECTOR, f'td[data-key="{key}"]')) == job["result"][key]
        verified = row.find_element(By.CSS_SELECTOR, 'td[data-key="verified_bound"]')
        assert _value(verified) == job["result"]["lipschitz_bound"]["verified"]
        # the fields the three runs differ in (JavaScript prints the float 1.0 as 1)
        assert row.find_element(By.CSS_SELECTOR, 'td[data-key="layer"]').text == job["spec"]["layer"]
        assert float(row.find_element(By.CSS_SELECTOR, 'td[data-key="gamma"]').text) == job["spec"]["gamma"]
    diff = [r.get_attribute("data-field") for r in find_all(By.CSS_SELECTOR, "#spec-diff tr[data-field]")]
    assert "layer" in diff and "gamma" in diff and "model" not in diff
    driver.set_window_size(1400, 1400)
    driver.save_screenshot(str(ARTIFACTS / "compare-page.png"))


def _paper_page(driver, wait, find, find_all, url, train, By) -> None:
    driver.get(f"{url}/#/paper")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, 'tr[data-preset="table1"]'))
    driver.get(f"{url}/#/paper/table1")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#paper-report tr[data-layer]"))
    budget = find(By.ID, "paper-budget").text
    assert "2 of the paper's 200 epochs" in budget and "1 of the paper's 1 seeds" in budget, budget
    assert "4 of 12 runs" in budget
    command = find(By.ID, "paper-command")
    assert command.text.startswith("lbdn paper run table1 --follow") and "lbdn paper report table1" in command.text
    find(By.ID, "paper-epochs").send_keys("20")
    wait.until(lambda d: "lbdn paper run table1 --epochs 20 --follow" in d.find_element(By.ID, "paper-command").text)
    for j in train:
        row = find(By.CSS_SELECTOR, f'#paper-report tr[data-layer="{j["spec"]["layer"]}"]')
        col = [1.0, 5.0, 10.0].index(float(j["spec"]["gamma"]))
        cell = row.find_elements(By.TAG_NAME, "td")[col]
        tightness = j["result"]["tightness"]
        if tightness < 0.01:  # a collapsed run is flagged, not averaged beside the paper's number
            assert "collapsed" in cell.text and _value(cell) is None
        else:
            assert _value(cell) == pytest.approx(100 * statistics.fmean([tightness]), rel=1e-12)
        assert cell.get_attribute("data-paper") is not None  # the paper's number beside ours
    driver.set_window_size(1400, 1100)
    driver.save_screenshot(str(ARTIFACTS / "paper-page.png"))


def _job_pages(driver, wait, url, auth, sw, job, By) -> None:
    # name, tags and note exist once the API has them (PATCH /v1/jobs/ID); the page shows them then
    named = httpx.patch(
        f"{url}/v1/jobs/{job['job_id']}",
        json={"name": "sandwich-g1", "tags": ["toy", "short"], "note": "2 epochs only"},
        headers=auth,
        timeout=60,
    ).is_success
    full = httpx.get(f"{url}/v1/jobs/{job['job_id']}", headers=auth, timeout=60).json()
    driver.get(f"{url}/#/jobs/{job['job_id']}")
    expected = {
        "lr": str(full["spec"]["lr"]),
        "seed": "123",
        "loss": "mse",
        "verified-bound": f"{full['result']['lipschitz_bound']['verified']:.6f}",
        "sweep": f"{sw['id']} table1 · gamma=1",
    }
    if named:
        expected.update({"name": "sandwich-g1", "tags": "toyshort", "note": "2 epochs only"})
    # the page re-renders as its event stream ends: read the facts until they hold (stale reads retried)
    facts = lambda d: {  # noqa: E731
        r.get_attribute("data-fact"): r.find_element(By.TAG_NAME, "td").text
        for r in d.find_elements(By.CSS_SELECTOR, "#job-facts tr[data-fact]")
    }
    wait.until(lambda d: {k: v for k, v in facts(d).items() if k in expected} == expected)
    # the facts table is drawn twice (then again with the sweep): read an element inside the wait,
    # which retries a reference the redraw made stale
    wait.until(lambda d: d.find_element(By.ID, "job-sweep").get_attribute("href").endswith(f"#/sweeps/{sw['id']}"))
    driver.set_window_size(1400, 1250)
    driver.save_screenshot(str(ARTIFACTS / "job-facts.png"))

    # an import is a model: its page links to it, and says it was imported
    folder = SHARED / "paper-checkpoints" / "square_wave" / "Toy-Aol-small-gamma5.0"
    imported = httpx.post(
        f"{url}/v1/models/import",
        files={"checkpoint": ("model.ckpt", (folder / "model.ckpt").read_bytes())},
        data={"spec": json.dumps({"model": "Toy", "layer": "Aol", "gamma": 5.0})},
        headers=auth,
        timeout=LONG,
    )
    assert imported.status_code in (200, 201), imported.text
    mid = imported.json()["id"]
    driver.get(f"{url}/#/jobs/{mid}")
    wait.until(lambda d: d.find_element(By.ID, "job-model").get_attribute("href").endswith(f"#/models/{mid}"))
    wait.until(lambda d: d.find_element(By.ID, "model-link").is_displayed())


def test_a_jobs_sweep_is_found_from_the_job(client, add_key) -> None:
    """GET /v1/jobs/ID/sweep (the job page's sweep link): null for a lone job, the sweep and the
    job's grid point for a sweep's job, 404 for another tenant's job."""
    toy = {"model": "Toy", "layer": "Sandwich", "dataset": "square_wave", "epochs": 1}
    lone = client.post("/v1/jobs", json={"kind": "train", "spec": toy}).json()["id"]
    assert client.get(f"/v1/jobs/{lone}/sweep").json() == {"job_id": lone, "sweep": None}
    made = client.post("/v1/sweeps", json={"name": "g", "spec": toy, "grid": {"gamma": [1, 2]}})
    assert made.status_code == 201, made.text
    sw = made.json()
    second = sw["jobs"][1]["job_id"]
    got = client.get(f"/v1/jobs/{second}/sweep").json()["sweep"]
    assert got == {
        "id": sw["id"],
        "name": "g",
        "preset": None,
        "role": "train",
        "point": {"gamma": 2.0},
        "train_job_id": None,
    }
    other = add_key(client.app, "other")
    missing = client.get(f"/v1/jobs/{second}/sweep", headers={"Authorization": f"Bearer {other}"})
    assert missing.status_code == 404
