"""docker-compose.yml would run as shipped. No Docker engine runs here, so the file is checked statically:
against the Compose Specification's JSON Schema (tests/data/compose-spec.json, provenance in
tests/data/README.md), then for what makes this stack start and stay up — a Kafka (KRaft) with a health
check, a persistent log volume and listeners for containers and for the host; workers that wait for a
healthy Kafka, restart, get their kill-command keys from an env file whose example is in the repo, and
keep their tables in a volume of their own; an image built from a lean context with every codec.
(tests/test_grafana.py checks that compose, Prometheus and Grafana agree.)"""

from __future__ import annotations

import base64
import fnmatch
import json
import re
import shlex
import tomllib
from typing import Any

import jsonschema
import pytest
import yaml

from schemas.signing import Keyring
from spendwatch.config import load_settings
from tests.conftest import ROOT

COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = ROOT / "tests/data/compose-spec.json"
ENV_EXAMPLE = ROOT / "deploy/spendwatch.env.example"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def listeners(value: str) -> dict[str, tuple[str, int]]:
    """`NAME://host:port,...` → {NAME: (host, port)}."""
    out = {}
    for part in value.split(","):
        name, address = part.split("://")
        host, port = address.rsplit(":", 1)
        out[name] = (host, int(port))
    return out


def published(service: dict[str, Any]) -> dict[int, tuple[str, int]]:
    """Container port → (host address, host port) of a service's published ports (short syntax)."""
    out = {}
    for spec in service.get("ports", []):
        *host, container = str(spec).split(":")
        address, port = (host[0], int(host[1])) if len(host) == 2 else ("0.0.0.0", int(host[0]))
        out[int(container)] = (address, port)
    return out


def argv(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else list(command)


def spendwatch_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if argv(s)[:1] == ["spendwatch"]}


def spec_validator() -> jsonschema.Draft201909Validator:
    """The schema says draft 2019-09 (by a `$schema` URI jsonschema does not know: `http://.../schema#`)."""
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft201909Validator.check_schema(schema)
    return jsonschema.Draft201909Validator(schema)


def test_the_file_is_valid_against_the_compose_spec_schema(compose):
    validator = spec_validator()
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:10])


def test_the_schema_check_can_fail(compose):
    worker = compose["services"]["worker"]
    for wrong in ({"restart_policy": "always"}, {"depends_on": {"kafka": {"condition": "healthy"}}},
                  {"volumes": [{"target": "/data"}]}):
        broken = {**compose, "services": {**compose["services"], "worker": {**worker, **wrong}}}
        assert not spec_validator().is_valid(broken), wrong


def test_kafka_runs_kraft_with_a_health_check_and_a_persistent_log_volume(compose):
    kafka = compose["services"]["kafka"]
    env = env_of(kafka)
    assert kafka["image"].startswith("apache/kafka:")
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert voters == [f"{env['KAFKA_NODE_ID']}@kafka:{listeners(env['KAFKA_LISTENERS'])['CONTROLLER'][1]}"]
    assert len(base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")) == 16  # `kafka-storage format` wants a UUID
    # single broker: internal topics cannot have more replicas than brokers
    for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"):
        assert env[key] == "1"
    assert env["KAFKA_NUM_PARTITIONS"] == "4"  # the workers' default [topics] partitions

    check = kafka["healthcheck"]
    test = check["test"]
    assert test[0] in ("CMD", "CMD-SHELL") and "kafka-broker-api-versions.sh" in " ".join(test)
    assert "kafka:9092" in " ".join(test)
    assert int(check["retries"]) * int(check["interval"].rstrip("s")) >= 60  # a cold KRaft start takes a while

    # the log directory is a named volume (survives `docker compose down`), declared at the top level
    mounts = {v.split(":")[1]: v.split(":")[0] for v in kafka["volumes"] if isinstance(v, str)}
    log_dir = env["KAFKA_LOG_DIRS"]
    assert log_dir in mounts and not mounts[log_dir].startswith((".", "/"))
    assert mounts[log_dir] in compose["volumes"]
    assert kafka["restart"] == "unless-stopped"


def test_kafka_advertises_a_listener_to_containers_and_one_to_the_host(compose):
    env = env_of(compose["services"]["kafka"])
    bound, advertised = listeners(env["KAFKA_LISTENERS"]), listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(bound) <= set(protocols) and set(advertised) <= set(bound)
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] not in advertised  # clients never get the controller's
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
    for name, (_, port) in advertised.items():
        assert bound[name][1] == port, f"{name} is advertised on {port} but bound on {bound[name][1]}"
    by_host = {host: (name, port) for name, (host, port) in advertised.items()}
    assert by_host["kafka"][1] == 9092  # what the spendwatch containers are given
    name, port = by_host["127.0.0.1"]  # for programs on the host: published there, on loopback only
    assert published(compose["services"]["kafka"])[port] == ("127.0.0.1", port)
    # every spendwatch service talks to the container listener
    for svc_name, svc in spendwatch_services(compose).items():
        args = argv(svc)
        assert args[args.index("--broker") + 1] == "kafka://kafka:9092", svc_name


def test_spendwatch_services_wait_for_a_healthy_kafka_and_restart(compose):
    services = spendwatch_services(compose)
    assert {"worker", "dashboard"} <= set(services)
    for name, svc in services.items():
        assert svc["depends_on"]["kafka"]["condition"] == "service_healthy", name
        assert svc["restart"] == "unless-stopped", name
        config = argv(svc)[argv(svc).index("--config") + 1]
        host = next(v.split(":")[0] for v in svc["volumes"] if isinstance(v, str) and v.split(":")[1] == config)
        assert (COMPOSE.parent / host).is_file(), f"{name} mounts a missing {host}"


def test_workers_get_their_control_keys_from_an_env_file_with_an_example(compose):
    worker = compose["services"]["worker"]
    args = argv(worker)
    config = next(v.split(":")[0] for v in worker["volumes"]
                  if isinstance(v, str) and v.split(":")[1] == args[args.index("--config") + 1])
    assert load_settings(COMPOSE.parent / config).kills()  # why the keys are needed: workers exit without them
    env_files = worker["env_file"] if isinstance(worker["env_file"], list) else [worker["env_file"]]
    assert env_files == ["deploy/spendwatch.env"]
    assert "SPENDWATCH_CONTROL_KEYS" not in env_of(worker)  # secrets stay out of the compose file
    example = dict(line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
                   if line.strip() and not line.startswith("#"))
    keys = Keyring.parse(example["SPENDWATCH_CONTROL_KEYS"].split(","), str(ENV_EXAMPLE))
    assert keys is not None
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert "deploy/spendwatch.env" in ignored  # the real one holds secrets


def test_each_worker_keeps_its_tables_in_a_data_volume_of_its_own(compose):
    worker = compose["services"]["worker"]
    args = argv(worker)
    data_dir = args[args.index("--data-dir") + 1]
    (volume,) = [v for v in worker["volumes"] if isinstance(v, dict) and v["target"] == data_dir]
    assert volume["type"] == "volume"
    if worker.get("deploy", {}).get("replicas", 1) > 1:
        # a named volume would be one RocksDB directory for every replica: anonymous, one per container
        assert "source" not in volume


def dockerignored(path: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path, p.removeprefix("**/"))
               or path.startswith(p.rstrip("/") + "/") for p in patterns)


def test_the_image_has_every_codec_and_a_lean_build_context():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for path in (".venv", ".git", "tests/data", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".hypothesis",
                 "spendwatch/__pycache__", "deploy/secrets/dashboard-token", "deploy/spendwatch.env"):
        assert dockerignored(path, patterns), f"{path} would be copied into the image"
    for path in ("pyproject.toml", "README.md", "spendwatch/cli/__init__.py", "schemas/events.py",
                 "streams/dashboard/static"):
        assert not dockerignored(path, patterns), f"the image needs {path}"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"pip install [^\n]*\.\s", dockerfile)  # the project, with its dependencies
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    aiokafka = next(d for d in deps if d.startswith("aiokafka"))
    extras = set(re.search(r"\[(.*?)\]", aiokafka).group(1).split(","))  # type: ignore[union-attr]
    assert {"snappy", "lz4", "zstd"} <= extras  # gzip is in the standard library
    assert "has_zstd()" in dockerfile  # and the build fails if a codec is missing
