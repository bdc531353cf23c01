"""The Compose files against the Compose Specification's JSON schema (check-jsonschema's vendored
copy), alone and merged as `docker compose -f ... config` would merge them, the nginx
configuration of the scaled variant through crossplane (nginx's own parser, in Python), and what
the files must say. No Docker engine or Compose plugin is needed (the stacks run for real in
test_container_stack.py and test_container_failover.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import pytest

from tests.deploy.support import (
    COMPOSE,
    COMPOSE_CPU,
    COMPOSE_SCALE,
    DOCKERFILE,
    NGINX_CONF,
    REPO,
    compose_errors,
    dev_module,
    dev_tool,
    exec_form,
    go_seconds,
    interpolate,
    load_compose,
    merge_compose,
    parse_dockerfile,
    strip_tags,
)

VARIANTS = {
    "gpu": (COMPOSE,),
    "cpu": (COMPOSE, COMPOSE_CPU),
    "scale": (COMPOSE, COMPOSE_SCALE),
    "cpu+scale": (COMPOSE, COMPOSE_CPU, COMPOSE_SCALE),
}


def config(variant: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The merged, interpolated model of a variant, as `docker compose config` prints it."""
    return interpolate(merge_compose(*VARIANTS[variant]), env or {})


def service(variant: str, name: str = "verydeep") -> dict[str, Any]:
    return config(variant)["services"][name]


# --- the schema --------------------------------------------------------------------------------


def test_check_jsonschema_accepts_the_main_file() -> None:
    """The CLI as a person would run it (docker-compose.yml has no custom YAML tags)."""
    result = subprocess.run(
        [
            str(dev_tool("check-jsonschema")),
            "--builtin-schema",
            "vendor.compose-spec",
            str(COMPOSE),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_CPU, COMPOSE_SCALE], ids=lambda p: p.name)
def test_each_file_alone_follows_the_schema(path: Path) -> None:
    assert compose_errors(strip_tags(load_compose(path))) == []


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_merged_variant_follows_the_schema(variant: str) -> None:
    assert compose_errors(config(variant)) == []
    # And with every variable set from outside, as with a .env file.
    env = {
        "VERYDEEP_PUBLISH": "127.0.0.1:9000",
        "VERYDEEP_DEVICE": "auto",
        "VERYDEEP_MAX_CONCURRENCY": "4",
    }
    assert compose_errors(config(variant, env)) == []


def test_schema_check_is_live() -> None:
    """A GPU reservation written wrongly is caught, so the checks above mean something."""
    broken = config("gpu")
    broken["services"]["verydeep"]["deploy"]["resources"]["reservations"]["devices"][0][
        "capabilities"
    ] = "gpu"
    broken["services"]["verydeep"]["healthcheck"]["intervall"] = "15s"
    errors = compose_errors(broken)
    assert any("capabilities" in e for e in errors), errors
    assert any("intervall" in e for e in errors), errors


# --- the GPU service (docker compose up) -------------------------------------------------------


def test_gpu_service_builds_this_image_and_reserves_a_gpu() -> None:
    svc = service("gpu")
    assert svc["build"]["context"] == "."
    assert svc["build"]["args"]["VERYDEEP_EXTRAS"] == "cuda"
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    gpu = devices[0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert ("count" in gpu) != ("device_ids" in gpu), "count or device_ids, not both"
    assert svc["environment"]["VERYDEEP_DEVICE"] == "cuda"


def test_serves_the_model_store_read_only_on_port_8000() -> None:
    svc = service("gpu")
    assert svc["ports"] == ["8000:8000"]
    (volume,) = svc["volumes"]
    assert volume == {
        "type": "bind",
        "source": "./model_store",
        "target": "/models",
        "read_only": True,
    }
    assert (REPO / "model_store").is_dir()
    env = svc["environment"]
    assert env["VERYDEEP_MODEL_STORE"] == volume["target"]
    # The image listens where Compose publishes.
    _, stages = parse_dockerfile(DOCKERFILE.read_text())
    assert stages[-1].env()["VERYDEEP_PORT"] == svc["ports"][0].split(":")[-1]


def test_settings_are_known_to_the_service() -> None:
    settings = pytest.importorskip("service.settings", reason="the service's settings module")
    known = {f"VERYDEEP_{name.upper()}" for name in settings.Settings.model_fields}
    for variant in VARIANTS:
        env = service(variant)["environment"]
        assert set(env) <= known, f"{variant}: unknown settings {set(env) - known}"
    # Passed through only when set in the shell or .env: an empty value would not mean unset.
    assert service("gpu")["environment"]["VERYDEEP_DEFAULT_MODEL"] is None


def test_healthcheck_waits_for_readiness_and_restart_policy() -> None:
    svc = service("gpu")
    check = svc["healthcheck"]
    assert check["test"] == ["CMD", "verydeep-healthcheck", "/readyz"]
    for key in ("interval", "timeout", "start_period", "start_interval"):
        go_seconds(check[key])
    assert go_seconds(check["timeout"]) < go_seconds(check["interval"])
    # Same probe as the image's own HEALTHCHECK.
    _, stages = parse_dockerfile(DOCKERFILE.read_text())
    image_check = stages[-1].all("HEALTHCHECK")[-1].args.partition(" CMD ")[2]
    assert check["test"][1:] == exec_form(image_check)
    assert svc["restart"] in ("always", "unless-stopped", "on-failure")
    go_seconds(svc["stop_grace_period"])


def test_build_arguments_are_the_dockerfiles() -> None:
    """The build arguments Compose passes exist in the Dockerfile, and with nothing set in the
    shell they are its defaults (so `docker compose build` and `make image` build the same)."""
    global_args, stages = parse_dockerfile(DOCKERFILE.read_text())
    declared = dict(global_args)
    for stage in stages:
        for inst in stage.all("ARG"):
            key, _, default = inst.args.partition("=")
            declared.setdefault(key.strip(), default.strip())
    args = service("gpu")["build"]["args"]
    assert set(args) <= set(declared), set(args) - set(declared)
    for key in ("PYTHON_IMAGE", "PIP_INDEX_URL", "EXTRA_CA_CERT"):
        assert args[key] == declared[key], key
    # Each comes from a VERYDEEP_-prefixed variable, never from pip's own PIP_INDEX_URL of the
    # shell (which may name an index on the host's localhost, out of the build's reach).
    raw = load_compose(COMPOSE)["services"]["verydeep"]["build"]["args"]
    for key in ("PYTHON_IMAGE", "PIP_INDEX_URL", "EXTRA_CA_CERT"):
        assert raw[key].startswith(f"${{VERYDEEP_{key}:-"), raw[key]
    custom = config("gpu", {"VERYDEEP_PIP_INDEX_URL": "https://mirror.example/simple"})
    assert custom["services"]["verydeep"]["build"]["args"]["PIP_INDEX_URL"] == (
        "https://mirror.example/simple"
    )


def test_health_checks_turn_healthy_within_a_second_or_two() -> None:
    """Until their first success, both health checks run every second (start_interval, Docker
    Engine 25 or newer), so that a replica gets traffic soon after it is ready and the stack is
    up in seconds rather than after a first 15 s interval."""
    for name in ("verydeep", "proxy"):
        check = service("scale", name)["healthcheck"]
        assert go_seconds(check["start_interval"]) <= 1, name
        assert go_seconds(check["start_period"]) >= 10, name


def test_hardening() -> None:
    svc = service("gpu")
    assert svc["read_only"] is True and "/tmp" in svc["tmpfs"]
    assert svc["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in svc["security_opt"]


# --- the CPU override --------------------------------------------------------------------------


def test_cpu_override_drops_the_gpu_and_builds_the_cpu_image() -> None:
    svc = service("cpu")
    assert "devices" not in svc["deploy"]["resources"]["reservations"]
    assert svc["environment"]["VERYDEEP_DEVICE"] == "cpu"
    assert svc["build"]["args"]["VERYDEEP_EXTRAS"] == ""
    assert svc["image"] != service("gpu")["image"], "the CPU image must not overwrite the GPU one"
    # Everything else is the main file's.
    gpu = service("gpu")
    for key in ("ports", "volumes", "healthcheck", "restart", "read_only"):
        assert svc[key] == gpu[key]


def test_cpu_override_uses_reset_not_an_empty_list() -> None:
    """An empty list would be appended to the main file's devices (Compose merges sequences):
    only !reset removes the reservation."""
    raw = load_compose(COMPOSE_CPU)
    devices = raw["services"]["verydeep"]["deploy"]["resources"]["reservations"]["devices"]
    assert type(devices).__name__ == "Reset"


# --- the scaled variant ------------------------------------------------------------------------


def test_scaled_replicas_publish_nothing_and_the_proxy_fronts_them() -> None:
    cfg = config("scale")
    replicas, proxy = cfg["services"]["verydeep"], cfg["services"]["proxy"]
    assert "ports" not in replicas, "replicas cannot all publish the same host port"
    assert replicas["expose"] == ["8000"]
    assert replicas["deploy"]["replicas"] >= 2
    assert replicas["deploy"]["resources"]["reservations"]["devices"], "still on the GPU"
    assert proxy["ports"] == ["8000:8000"]
    assert proxy["depends_on"]["verydeep"]["condition"] == "service_healthy"
    assert "container_name" not in replicas  # --scale needs generated names
    (conf,) = proxy["volumes"]
    # Paths of later -f files are relative to the first file's folder, the project directory.
    assert (REPO / conf["source"]).resolve() == NGINX_CONF
    assert conf["target"] == "/etc/nginx/conf.d/default.conf" and conf["read_only"] is True
    assert "verydeep-healthcheck" not in str(proxy.get("healthcheck"))


def test_cpu_scaled_variant_has_no_gpu() -> None:
    replicas = service("cpu+scale")
    assert "devices" not in replicas["deploy"]["resources"]["reservations"]
    assert "ports" not in replicas


def _nginx_directives() -> list[dict[str, Any]]:
    """Parse the proxy configuration with crossplane, inside the http{} block that includes it
    in the nginx image, in strict mode (unknown directives and wrong argument counts fail)."""
    crossplane = dev_module("crossplane")

    with TemporaryDirectory() as tmp:
        main = Path(tmp) / "nginx.conf"
        main.write_text(f"events {{}}\nhttp {{\n    include {NGINX_CONF};\n}}\n")
        payload = crossplane.parse(str(main), strict=True, catch_errors=True)
    assert payload["status"] == "ok", payload["errors"]
    (included,) = [c for c in payload["config"] if Path(c["file"]) == NGINX_CONF]
    return included["parsed"]


def _find(directives: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    found = []
    for d in directives:
        if d["directive"] == name:
            found.append(d)
        found += _find(d.get("block", []), name)
    return found


def _size_bytes(text: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    return int(text[:-1]) * units[text[-1].lower()] if text[-1].isalpha() else int(text)


def test_nginx_config_parses_and_fits_the_service() -> None:
    directives = _nginx_directives()
    (upstream,) = _find(directives, "upstream")
    (server,) = _find(upstream["block"], "server")
    assert server["args"][0] == "verydeep:8000"  # the Compose service name and its port
    assert "resolve" in server["args"]  # new replicas are found without a reload
    assert _find(directives, "resolver")[0]["args"][0] == "127.0.0.11"  # Docker's DNS
    (listen,) = _find(directives, "listen")
    proxy = service("scale", "proxy")
    assert proxy["ports"][0].split(":")[-1] == listen["args"][0]
    passes = _find(directives, "proxy_pass")  # the location and its second pass (@retry)
    assert passes and all(p["args"] == [f"http://{upstream['args'][0]}"] for p in passes)

    # Uploads the service accepts must get through, so that it answers too-large ones with its
    # own JSON 413; a slow request must end with the service's 504, not the proxy's.
    env = service("scale")["environment"]
    body_limit = _size_bytes(_find(directives, "client_max_body_size")[0]["args"][0])
    assert body_limit > int(env["VERYDEEP_MAX_UPLOAD_BYTES"])
    read_timeout = go_seconds(_find(directives, "proxy_read_timeout")[0]["args"][0])
    try:
        from service.settings import Settings

        request_timeout = Settings.model_fields["request_timeout"].default
    except ImportError:
        request_timeout = 120.0
    assert read_timeout > request_timeout
    retry = _find(directives, "proxy_next_upstream")[0]["args"]
    assert "http_503" in retry and "non_idempotent" in retry

    # The client and request ID nginx passes on are believed by the replicas, which only it
    # reaches, and logged (docs/serving.md, the access log).
    passed = {d["args"][0].lower(): d["args"][1] for d in _find(directives, "proxy_set_header")}
    assert passed["x-forwarded-for"] == "$proxy_add_x_forwarded_for"
    assert passed["x-request-id"] == "$request_id"
    assert env["VERYDEEP_FORWARDED_ALLOW_IPS"] == "*" and "ports" not in service("scale")


def _location(directives: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    (found,) = [d for d in _find(directives, "location") if d["args"][-1] == name]
    return found["block"]


def test_nginx_fails_over_without_losing_a_request() -> None:
    """What the container test of the failover (test_container_failover.py) relies on, read
    statically: retries of every kind of failure, short connect timeout, a failed replica left
    alone briefly, re-resolution faster than that, keep-alive shorter than uvicorn's, a second
    pass when nginx runs out of replicas, and a 503 with Retry-After as the last word."""
    import inspect

    import uvicorn

    directives = _nginx_directives()
    retry = _find(directives, "proxy_next_upstream")[0]["args"]
    assert {"error", "timeout", "http_502", "http_503", "non_idempotent"} <= set(retry)
    assert go_seconds(_find(directives, "proxy_connect_timeout")[0]["args"][0]) <= 1
    assert go_seconds(_find(directives, "proxy_next_upstream_timeout")[0]["args"][0]) <= 30
    (upstream,) = _find(directives, "upstream")
    (server,) = _find(upstream["block"], "server")
    options = dict(a.split("=", 1) for a in server["args"] if "=" in a)
    assert options["max_fails"] == "1"
    valid = next(a for a in _find(directives, "resolver")[0]["args"] if a.startswith("valid="))
    assert go_seconds(valid.split("=")[1]) <= go_seconds(options["fail_timeout"])
    keepalive = go_seconds(_find(upstream["block"], "keepalive_timeout")[0]["args"][0])
    uvicorn_keepalive = inspect.signature(uvicorn.Config).parameters["timeout_keep_alive"].default
    assert keepalive < uvicorn_keepalive

    main = _location(directives, "/")
    assert ["502", "504", "=", "@retry"] in [d["args"] for d in _find(main, "error_page")]
    second = _location(directives, "@retry")
    assert _find(second, "proxy_pass")[0]["args"] == _find(main, "proxy_pass")[0]["args"]
    assert ["502", "504", "=", "@unavailable"] in [d["args"] for d in _find(second, "error_page")]
    assert _find(directives, "recursive_error_pages")[0]["args"] == ["on"]
    last = _location(directives, "@unavailable")
    assert _find(last, "add_header")[0]["args"] == ["Retry-After", "1", "always"]
    (answer,) = _find(last, "return")
    assert answer["args"][0] == "503" and '"code": "unavailable"' in answer["args"][1]


def test_nginx_check_is_live(tmp_path: Path) -> None:
    crossplane = dev_module("crossplane")
    bad = tmp_path / "bad.conf"
    bad.write_text(NGINX_CONF.read_text().replace("least_conn;", "least_conn on;"))
    main = tmp_path / "nginx.conf"
    main.write_text(f"events {{}}\nhttp {{\n    include {bad};\n}}\n")
    payload = crossplane.parse(str(main), strict=True, catch_errors=True)
    assert payload["status"] == "failed"
    assert "least_conn" in payload["errors"][0]["error"]
