"""Authentication and the startup guards."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from asyncgate.settings import ConfigError, Settings, hash_key


def test_health_needs_no_key(client):
    result = client.request("GET", "/v1/health", auth=False)
    assert result.status_code == 200
    assert result.json["status"] == "healthy"


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", "Bearer wrong", "Basic abc", "bearer not-a-key"]
)
def test_missing_or_wrong_keys_are_401_problems(client, header):
    headers = {} if header is None else {"Authorization": header}
    result = client.request("GET", "/v1/tasks", auth=False, headers=headers)
    assert result.status_code == 401
    assert result.headers["content-type"] == "application/problem+json"
    assert result.json["status"] == 401
    assert "Bearer" in result.headers["www-authenticate"]


def test_unknown_routes_still_need_a_key(client):
    assert client.request("GET", "/v1/nothing", auth=False).status_code == 401
    assert client.get("/v1/nothing").status_code == 404


def test_every_key_in_the_file_maps_to_its_tenant_and_principal(client, tenants):
    for name in ("a", "b", "c"):
        task = client.as_key(tenants.keys[name]).create_task()
        assert task["created_by"] == f"service:{name}"


def test_single_api_key_is_tenant_default(tmp_path):
    settings = Settings.from_env({"ASYNCGATE_API_KEY": "s3cret"})
    identity = settings.keys[hash_key("s3cret")]
    assert (identity.tenant, identity.principal) == ("default", "service:default")
    assert "s3cret" not in repr(settings.keys)


def test_both_key_sources_together(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(f"{hash_key('other')} acme service:billing\n")
    settings = Settings.from_env({"ASYNCGATE_API_KEY": "one", "ASYNCGATE_API_KEYS_FILE": str(keys)})
    assert len(settings.keys) == 2


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("plaintextkey acme service:x", "sha256"),
        (f"{hash_key('k')} acme", "expected"),
        (f"{hash_key('k')} acme nokind", "principal"),
        (f"{hash_key('k')} bad/tenant service:x", "tenant"),
    ],
)
def test_malformed_key_files_are_refused_with_the_line(tmp_path, line, reason):
    keys = tmp_path / "keys"
    keys.write_text("# comment\n\n" + line + "\n")
    with pytest.raises(ConfigError, match=reason) as info:
        Settings.from_env({"ASYNCGATE_API_KEYS_FILE": str(keys)})
    assert "line 3" in str(info.value)


def test_insecure_dev_mode_only_in_development():
    dev = Settings.from_env(
        {"ASYNCGATE_ENV": "development", "ASYNCGATE_ALLOW_INSECURE_DEV": "true"}
    )
    assert dev.insecure_dev
    with pytest.raises(ConfigError, match="ASYNCGATE_ENV=development"):
        Settings.from_env({"ASYNCGATE_ALLOW_INSECURE_DEV": "true"})
    with pytest.raises(ConfigError):
        Settings.from_env({"ASYNCGATE_ENV": "test", "ASYNCGATE_ALLOW_INSECURE_DEV": "true"})


def test_insecure_dev_mode_serves_tenant_default_as_service_dev(make_client):
    client = make_client(ENV="development", ALLOW_INSECURE_DEV="true", API_KEYS_FILE="")
    task = client.request("POST", "/v1/tasks", key="anything", json={"type": "x"}).json
    assert task["created_by"] == "service:dev"


def _start(env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCGATE_")}
    return subprocess.run(
        [sys.executable, "-c", "import asyncgate.main"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_production_without_a_key_source_refuses_to_start_with_one_line(tmp_path):
    result = _start({"ASYNCGATE_DATABASE_URL": f"sqlite:///{tmp_path}/x.db"})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "ASYNCGATE_API_KEY" in lines[0]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"ASYNCGATE_DATABASE_URL": "mysql://x"}, "installed: "),
        ({"ASYNCGATE_RATE_LIMIT_BACKEND": "nope"}, "installed: "),
        ({"ASYNCGATE_ANOMALY_EMITTERS": "log,pager"}, "installed: "),
        ({"ASYNCGATE_LEASE_DEFAULT_TTL_SECONDS": "0"}, "LEASE_DEFAULT_TTL_SECONDS"),
        ({"ASYNCGATE_MAX_BODY_BYTES": "lots"}, "MAX_BODY_BYTES"),
    ],
)
def test_bad_configuration_stops_startup_with_a_reason(tmp_path, env, expected):
    base = {"ASYNCGATE_API_KEY": "k", "ASYNCGATE_DATABASE_URL": f"sqlite:///{tmp_path}/x.db"}
    result = _start({**base, **env})
    assert result.returncode != 0
    [line] = result.stderr.strip().splitlines()
    assert expected in line


def test_keys_mint_prints_the_key_then_the_file_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "asyncgate.cli", "keys", "mint", "--tenant", "acme",
         "--principal", "service:billing"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    key, line = result.stdout.strip().splitlines()
    digest, tenant, principal = line.split()
    assert digest == hash_key(key) and key not in line
    assert (tenant, principal) == ("acme", "service:billing")
    keys = Path(tmp_path / "keys")
    keys.write_text(line + "\n")
    settings = Settings.from_env({"ASYNCGATE_API_KEYS_FILE": str(keys)})
    assert settings.keys[hash_key(key)].principal == "service:billing"
