"""Kafka SASL/TLS settings reach every client, from the config file and the environment.

The embedded Tansu 0.6.0 cannot serve as a SASL/TLS broker here (see README "Kafka security"):
these tests build the real aiokafka and Faust objects each client makes and inspect them."""

from __future__ import annotations

import asyncio
import datetime
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import SecretStr

from schemas.signing import Keyring
from spendwatch.config import ConfigError, KafkaConfig, load_settings
from spendwatch.emitter import UsageEmitter
from spendwatch.guard import KillSwitch
from spendwatch.integrations.otel import OtlpBridge
from spendwatch.runner import worker_options
from streams.app import faust_app
from streams.dashboard.feed import Feed
from streams.dashboard.model import ReadModel
from streams.kafka_security import KafkaSecurity, KafkaSecurityError
from tests.conftest import ROOT

PASSWORD = "p4ss-word-not-in-repr"
ENV = {"SPENDWATCH_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "SPENDWATCH_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
       "SPENDWATCH_KAFKA_USERNAME": "spendwatch", "SPENDWATCH_KAFKA_PASSWORD": PASSWORD}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A self-signed CA certificate and a client certificate/key, as PEM files."""
    d = tmp_path_factory.mktemp("pki")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "spendwatch-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    files = {"ca": d / "ca.pem", "cert": d / "client.pem", "key": d / "client.key"}
    files["ca"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return files


@pytest.fixture
def security(pki: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> KafkaSecurity:
    for k, v in {**ENV, "SPENDWATCH_KAFKA_CA_FILE": str(pki["ca"]), "SPENDWATCH_KAFKA_CERT_FILE": str(pki["cert"]),
                 "SPENDWATCH_KAFKA_KEY_FILE": str(pki["key"])}.items():
        monkeypatch.setenv(k, v)
    return KafkaSecurity.from_env()


def assert_secured(client: Any) -> None:
    """An aiokafka client (producer, consumer, low-level client) set up for SASL_SSL/SCRAM-SHA-512."""
    c = getattr(client, "_client", None) or getattr(client, "client", client)
    assert c._security_protocol == "SASL_SSL"
    assert c._sasl_mechanism == "SCRAM-SHA-512"
    assert c._sasl_plain_username == "spendwatch" and c._sasl_plain_password == PASSWORD
    assert isinstance(c._ssl_context, ssl.SSLContext) and c._ssl_context.check_hostname


def test_settings_come_from_the_file_and_the_environment_wins(tmp_path: Path, pki: dict[str, Path]):
    config = tmp_path / "c.toml"
    config.write_text(f'[kafka]\nsecurity_protocol = "SASL_SSL"\nsasl_mechanism = "SCRAM-SHA-256"\n'
                      f'username = "file-user"\npassword_env = "MY_KAFKA_PW"\nca_file = "{pki["ca"]}"\n'
                      'check_hostname = false\n')
    sec = load_settings(config).kafka.security({"MY_KAFKA_PW": PASSWORD})
    assert (sec.protocol, sec.sasl_mechanism, sec.username, sec.ca_file, sec.check_hostname) == (
        "SASL_SSL", "SCRAM-SHA-256", "file-user", pki["ca"], False)
    assert sec.password == SecretStr(PASSWORD) and PASSWORD not in repr(sec) + sec.describe()
    kw = sec.aiokafka_kwargs()
    assert kw["sasl_plain_password"] == PASSWORD and kw["ssl_context"].check_hostname is False
    over = load_settings(config).kafka.security({"MY_KAFKA_PW": PASSWORD, "SPENDWATCH_KAFKA_USERNAME": "env-user",
                                                 "SPENDWATCH_KAFKA_SASL_MECHANISM": "scram-sha-512"})
    assert (over.username, over.sasl_mechanism) == ("env-user", "SCRAM-SHA-512")
    assert KafkaConfig().security({}) == KafkaSecurity()  # nothing set: plaintext


def test_the_password_is_never_in_the_file(tmp_path: Path):
    config = tmp_path / "c.toml"
    config.write_text('[kafka]\nsecurity_protocol = "SASL_SSL"\nusername = "u"\npassword = "hunter22"\n')
    with pytest.raises(ConfigError, match="password_env") as err:
        load_settings(config)
    assert "hunter22" not in str(err.value)


def test_clear_one_line_errors_name_what_is_missing(tmp_path: Path):
    with pytest.raises(KafkaSecurityError, match=r"\$MY_PW is not set") as err:
        KafkaConfig(security_protocol="SASL_PLAINTEXT", username="u", password_env="MY_PW").security({})
    assert "\n" not in str(err.value)
    missing = tmp_path / "nope.pem"
    with pytest.raises(KafkaSecurityError, match=f"kafka ca_file {missing}: no such file"):
        KafkaSecurity.from_sources({"security_protocol": "SSL", "ca_file": str(missing)}, {})
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(KafkaSecurityError, match=f"ca_file {bad}"):
        KafkaSecurity(protocol="SSL", ca_file=bad).ssl_context()
    with pytest.raises(KafkaSecurityError, match="SECURITY_PROTOCOL"):
        KafkaSecurity.from_sources(None, {"SPENDWATCH_KAFKA_SECURITY_PROTOCOL": "TLS"})


def test_the_cli_says_it_in_one_line_without_a_traceback(tmp_path: Path):
    done = subprocess.run([sys.executable, "-m", "spendwatch", "report", "--broker", "kafka://127.0.0.1:9"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "SPENDWATCH_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                               "SPENDWATCH_KAFKA_USERNAME": "u"})
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "spendwatch: error: kafka security_protocol SASL_SSL needs a password: $SPENDWATCH_KAFKA_PASSWORD is not set"]


def test_every_client_is_built_with_the_settings(security: KafkaSecurity):
    async def build() -> None:
        emitter = UsageEmitter("kafka://127.0.0.1:9")  # from the environment
        await emitter.start()
        assert emitter._producer is not None
        assert_secured(emitter._producer)
        await emitter.stop()

        switch = KillSwitch("kafka://127.0.0.1:9", keyring=Keyring.from_text("k:0123456789abcdef", "t", ","),
                            security=security)
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
        from aiokafka.admin import AIOKafkaAdminClient

        assert_secured(AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9", **switch._security_kwargs))
        assert_secured(AIOKafkaConsumer(bootstrap_servers="x:9", **Feed(ReadModel(), "x:9")._security_kwargs))
        bridge = OtlpBridge("kafka://127.0.0.1:9")
        assert bridge.security == security
        assert_secured(AIOKafkaProducer(bootstrap_servers="x:9", **security.aiokafka_kwargs()))
        assert_secured(AIOKafkaAdminClient(bootstrap_servers="x:9", **security.aiokafka_kwargs())._client)

    asyncio.run(build())


def test_the_worker_gives_faust_broker_credentials(security: KafkaSecurity, tmp_path: Path):
    import faust

    from spendwatch.config import Settings

    opts = worker_options(Settings())
    assert opts.kafka == security  # [kafka] empty, the environment set
    app = faust_app(opts, "kafka://127.0.0.1:9", "sec-test", None)
    creds = app.conf.broker_credentials
    assert isinstance(creds, faust.SASLCredentials)
    assert (creds.username, creds.password, creds.mechanism.value, creds.protocol.value) == (
        "spendwatch", PASSWORD, "SCRAM-SHA-512", "SASL_SSL")
    assert PASSWORD not in repr(creds)
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    auth = credentials_to_aiokafka_auth(creds)
    assert auth["security_protocol"] == "SASL_SSL" and auth["sasl_plain_password"] == PASSWORD

    tls = KafkaSecurity(protocol="SSL", ca_file=security.ca_file, cert_file=security.cert_file,
                        key_file=security.key_file)
    assert isinstance(tls.faust_credentials(), faust.SSLCredentials)
    assert KafkaSecurity().faust_credentials() is None
