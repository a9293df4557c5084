"""docker-compose.yml cannot run here (no Docker): this keeps it consistent with core.settings."""

from __future__ import annotations

from pathlib import Path

import yaml

from core.settings import Settings

COMPOSE = Path(__file__).resolve().parents[1] / "docker-compose.yml"


def _services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_every_lbdn_variable_is_a_setting_and_the_values_validate() -> None:
    fields = {f"LBDN_{name.upper()}" for name in Settings.model_fields}
    for name, service in _services().items():
        env = {k: str(v) for k, v in (service.get("environment") or {}).items() if k.startswith("LBDN_")}
        assert set(env) <= fields, (name, set(env) - fields)
        if env:  # the values pass Settings' own checks (compose's ${...} stand for secrets)
            values = {k.removeprefix("LBDN_").lower(): v for k, v in env.items() if "${" not in v}
            values.pop("env", None)  # production checks want real secrets
            Settings(_env_file=None, **values)


def test_api_and_workers_share_the_object_store_the_init_service_makes() -> None:
    services = _services()
    api, worker = services["api"]["environment"], services["worker"]["environment"]
    for key in ("LBDN_ARTIFACTS", "LBDN_S3_ENDPOINT", "LBDN_S3_ACCESS_KEY_ID", "LBDN_S3_SECRET_ACCESS_KEY"):
        assert api[key] == worker[key], key
    bucket = api["LBDN_ARTIFACTS"].removeprefix("s3://").split("/")[0]
    assert f"mb --ignore-existing store/{bucket}" in " ".join(services["minio-init"]["command"])
    assert api["LBDN_S3_ENDPOINT"].startswith("http://minio:")
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"


def test_the_proxy_balances_every_api_replica() -> None:
    """API replicas behind nginx: the scaled `api` service is the proxy's one upstream, on the
    port the API listens on, and the proxy's image reads the nginx.conf that says so."""
    services = _services()
    api, proxy = services["api"], services["proxy"]
    assert api["deploy"]["replicas"] >= 2 and "ports" not in api  # reached through the proxy only
    port = api["command"][api["command"].index("--port") + 1]
    conf = (COMPOSE.parent / "deploy" / "nginx.conf").read_text()
    upstream = conf.split("upstream lbdn_api {", 1)[1].split("}", 1)[0]
    assert f"server api:{port}" in upstream and "least_conn;" in upstream
    assert "proxy_pass http://lbdn_api;" in conf
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in proxy["volumes"]
    assert "http_503" not in conf  # a shed request's 503 goes to its client (see nginx.conf)
