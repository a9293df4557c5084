"""The dashboard in a real headless Chromium (Debian's `chromium` + `chromium-driver`, via Selenium)
against a real `lbdn api` and Celery worker: enter an API key, submit a Toy job from the form, watch
it succeed with its curves drawn, then certify uploaded PNGs on an image model's page.

Every wait is for something to appear on the page (WebDriverWait polls the DOM); the time limits
only bound a hung run. Screenshots go to $LBDN_TEST_ARTIFACTS/dashboard (default: test-artifacts/ in
the repository) whether the test passes or not.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("LBDN_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "dashboard"
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
TRAIN_BLUE = (0x1F, 0x77, 0xB4)  # app.js COLORS.train: the train-loss line
LONG = 600  # seconds: only a bound on a hung run (two busy loops beside us slow everything down)


def test_static_files_headers(client):
    """`/` needs no key (the page asks for one) and carries a CSP; assets are hashed and cached."""
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-cache"
    assert client.get("/", headers={"If-None-Match": page.headers["etag"]}).status_code == 304
    js = client.get("/dashboard/app.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    digest = js.headers["etag"].strip('"')
    assert f"/dashboard/app.js?v={digest}" in page.text
    assert "immutable" in client.get(f"/dashboard/app.js?v={digest}").headers["cache-control"]
    assert client.get("/dashboard/app.js?v=0ld").headers["cache-control"] == "no-cache"
    lic = client.get("/dashboard/uPlot-LICENSE.txt")
    assert lic.status_code == 200 and "MIT" in lic.text
    missing = client.get("/dashboard/index.html")  # only the listed files are served
    assert missing.status_code == 404 and "app.js" in missing.json()["detail"]
    assert client.get("/dashboard/..%2F..%2Fmain.py").status_code == 404


def _browser(tmp_path: Path):
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        message = (
            f"the dashboard browser test needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}); "
            "`make test` installs them as root: apt-get install -y chromium chromium-driver"
        )
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set, so this is a failure, not a skip)")
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM  # the system browser: Selenium Manager downloads nothing
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,1050",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(
        service=Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log")), options=options
    )


def test_a_missing_browser_skips_only_outside_ci(monkeypatch, tmp_path):
    me = sys.modules[__name__]
    monkeypatch.setattr(me, "CHROMIUM", str(tmp_path / "no-chromium"))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install -y chromium chromium-driver"):
        me._browser(tmp_path)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        me._browser(tmp_path)


def _pngs(folder: Path) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for name, pixels in (
        ("noise.png", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)),
        ("gradient.png", np.stack([*np.meshgrid(np.arange(32) * 8, np.arange(32) * 8), np.full((32, 32), 128)], -1)),
    ):
        paths.append(folder / name)
        Image.fromarray(pixels.astype(np.uint8), "RGB").save(paths[-1])
    return paths


@pytest.mark.slow
def test_dashboard_in_a_browser(service_factory, add_key, trained_model, tmp_path):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from api.main import create_app

    driver = _browser(tmp_path)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    svc = service_factory("redis", "sqlite", certify_attack_steps=30)
    svc.worker()
    store_app = create_app(svc.settings)  # the same store as the service: keys and a model for the page
    try:
        secret = add_key(store_app, "acme")
        model_id = trained_model(
            store_app,
            "acme",
            {"model": "KWL", "layer": "Sandwich", "scale": "small", "gamma": 1.0, "dataset": "cifar10"},
            classes=CIFAR10,
            mean=CIFAR10_MEAN,
            std=CIFAR10_STD,
        )
        # the job list re-renders every 2 s: an element found just before may be replaced
        wait = WebDriverWait(driver, LONG, poll_frequency=0.2, ignored_exceptions=[StaleElementReferenceException])
        find = driver.find_element

        # 1. The page loads without a key, meets the API's 401 and asks for one.
        driver.get(svc.url + "/")
        wait.until(ec.visibility_of_element_located((By.ID, "key-dialog")))
        assert "needs an API key" in find(By.ID, "error-text").text

        # A wrong key: the problem+json detail is shown as a sentence.
        find(By.ID, "key-input").send_keys("lbdn_wrong")
        find(By.ID, "key-save").click()
        wait.until(lambda d: "unknown or revoked API key" in find(By.ID, "error-text").text)
        assert "Unauthorized (401)" in find(By.ID, "error-text").text
        key_input = wait.until(ec.visibility_of_element_located((By.ID, "key-input")))
        key_input.clear()
        key_input.send_keys(secret)
        find(By.ID, "key-save").click()
        wait.until(ec.visibility_of_element_located((By.ID, "jobs-table")))
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, f'tr[data-job="{model_id}"]')))
        assert driver.execute_script("return sessionStorage.getItem('lbdn.apiKey')") == secret

        # 2. Submit a Toy job from the form.
        driver.get(svc.url + "/#/new")
        wait.until(ec.visibility_of_element_located((By.ID, "new-job")))
        Select(find(By.ID, "f-model")).select_by_value("Toy")
        Select(find(By.ID, "f-layer")).select_by_value("Sandwich")
        for name, value in (("gamma", "2"), ("epochs", "4")):
            box = find(By.ID, f"f-{name}")
            box.clear()
            box.send_keys(value)
        assert '"epochs": 4' in find(By.ID, "spec-preview").text
        find(By.ID, "submit-job").click()
        wait.until(lambda d: "#/jobs/job_" in d.current_url)
        job_id = driver.current_url.rsplit("/", 1)[1]

        # 3. It runs to the end on the live page; curves hold every epoch and are drawn.
        status_of = lambda d: d.find_element(By.ID, "job-status").get_attribute("data-status")  # noqa: E731
        wait.until(lambda d: status_of(d) in ("succeeded", "failed", "cancelled"))
        status = status_of(driver)
        assert status == "succeeded", find(By.ID, "job-error").text
        wait.until(lambda d: d.find_element(By.ID, "chart-loss").get_attribute("data-points") == "4")
        assert find(By.ID, "chart-lr").get_attribute("data-points") == "4"
        blue = driver.execute_script(
            """const c = document.querySelector('#chart-loss canvas'), [r, g, b] = arguments[0];
               const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
               let n = 0;
               for (let i = 0; i < d.length; i += 4)
                 if (d[i + 3] > 200 && Math.abs(d[i] - r) < 30 && Math.abs(d[i + 1] - g) < 30 && Math.abs(d[i + 2] - b) < 30) n++;
               return n;""",
            list(TRAIN_BLUE),
        )
        assert blue > 50, f"the train-loss curve is not drawn ({blue} pixels of its colour)"
        wait.until(lambda d: "Epoch:   4" in d.find_element(By.ID, "log").text)
        wait.until(lambda d: "model.safetensors" in d.find_element(By.ID, "artifacts").text)
        assert find(By.ID, "model-link").is_displayed() and not find(By.ID, "cancel-job").is_displayed()
        driver.set_window_size(1400, 1250)  # the whole page, artifacts included
        driver.save_screenshot(str(ARTIFACTS / "job-page.png"))

        # The list shows it as succeeded (the list polls).
        driver.get(svc.url + "/#/jobs")
        wait.until(
            lambda d: (
                d.find_element(By.CSS_SELECTOR, f'tr[data-job="{job_id}"] .badge').get_attribute("data-status")
                == "succeeded"
            )
        )
        driver.save_screenshot(str(ARTIFACTS / "jobs-list.png"))

        # 4. The image model's page: upload two PNGs, see class, margin and both radii per image.
        driver.get(svc.url + f"/#/models/{model_id}")
        upload = wait.until(ec.presence_of_element_located((By.ID, "certify-files")))
        pngs = _pngs(tmp_path)
        upload.send_keys("\n".join(str(p) for p in pngs))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "tr.cert-row")) == 2)
        rows = driver.find_elements(By.CSS_SELECTOR, "tr.cert-row")
        api = httpx.post(
            f"{svc.url}/v1/models/{model_id}/certify",
            files=[("files", (p.name, p.read_bytes(), "image/png")) for p in pngs],
            headers={"Authorization": f"Bearer {secret}"},
            timeout=LONG,
        ).json()["results"]
        for row, png in zip(rows, pngs):  # in input order (an answer's rows were once shown reversed)
            expected = api[pngs.index(png)]
            cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
            assert cells[0] == png.name
            assert cells[2] == f"{expected['class_name']} ({expected['predicted']})"
            assert cells[4] == f"{255 * expected['radius_pixel']:.2f}/255"
            assert cells[5].endswith("/255") or cells[5] == "none found"
            assert row.find_element(By.CSS_SELECTOR, ".interval .certified").size["width"] > 0
        driver.set_window_size(1400, 700)
        driver.save_screenshot(str(ARTIFACTS / "model-page.png"))

        # 5. Cancel from the job page: a run far too long to end by itself, cancelled once it has
        # finished an epoch, stops as `cancelled`.
        driver.set_window_size(1400, 1050)
        driver.get(svc.url + "/#/new")
        box = wait.until(ec.visibility_of_element_located((By.ID, "f-epochs")))
        box.clear()
        box.send_keys("100000")
        find(By.ID, "submit-job").click()
        wait.until(lambda d: "#/jobs/job_" in d.current_url and d.current_url.rsplit("/", 1)[1] != job_id)
        wait.until(lambda d: int(d.find_element(By.ID, "chart-loss").get_attribute("data-points") or 0) >= 1)
        find(By.ID, "cancel-job").click()
        wait.until(lambda d: status_of(d) == "cancelled")
        assert not find(By.ID, "cancel-job").is_displayed()

        # Nothing the page does is refused by its own Content-Security-Policy.
        logs = driver.get_log("browser")
        assert not [e for e in logs if "Content Security Policy" in e.get("message", "")], logs
    except Exception:
        report_failure(driver, "failure.png")
        raise
    finally:
        close_browser(driver, store_app, tmp_path)


def report_failure(driver, screenshot: str) -> None:
    """What the page showed and the browser logged when a test failed."""
    driver.save_screenshot(str(ARTIFACTS / screenshot))
    for entry in driver.get_log("browser")[-30:]:
        print("browser:", entry.get("level"), entry.get("message"))


def close_browser(driver, store_app, tmp_path: Path) -> None:
    store_app.state.services.engine.dispose()
    driver.quit()
    shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)
