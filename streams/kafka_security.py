"""How every Kafka client of spendwatch authenticates and encrypts: SASL (PLAIN, SCRAM-SHA-256/512) and TLS.

One frozen description, `KafkaSecurity`, read from the config file's `[kafka]` table and the
environment (`SPENDWATCH_KAFKA_*`, which wins), never from command-line arguments (those show
up in `ps`). It gives aiokafka's keyword arguments (`aiokafka_kwargs`) and Faust's
`broker_credentials` (`faust_credentials`). The password is a `SecretStr`: it is not in the
repr, and no error message carries it.

>>> sec = KafkaSecurity.from_sources({"security_protocol": "SASL_PLAINTEXT", "username": "svc"},
...                                  {"SPENDWATCH_KAFKA_PASSWORD": "s3cret"})
>>> "s3cret" in repr(sec), sec.password
(False, SecretStr('**********'))
>>> sorted(sec.aiokafka_kwargs())
['sasl_mechanism', 'sasl_plain_password', 'sasl_plain_username', 'security_protocol']
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from ssl import SSLContext, SSLError
from typing import TYPE_CHECKING, Any, Literal, get_args

from pydantic import SecretStr

from streams.secrets import register

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
PROTOCOLS: tuple[str, ...] = get_args(SecurityProtocol)
MECHANISMS: tuple[str, ...] = get_args(SaslMechanism)

ENV = "SPENDWATCH_KAFKA_"
PASSWORD_ENV = ENV + "PASSWORD"
"""Where the SASL password comes from unless the config's `kafka.password_env` names another variable."""
ENV_KEYS = {"security_protocol": ENV + "SECURITY_PROTOCOL", "sasl_mechanism": ENV + "SASL_MECHANISM",
            "username": ENV + "USERNAME", "ca_file": ENV + "CA_FILE", "cert_file": ENV + "CERT_FILE",
            "key_file": ENV + "KEY_FILE", "check_hostname": ENV + "CHECK_HOSTNAME"}
"""Config key → environment variable that overrides it."""


class KafkaSecurityError(ValueError):
    """The Kafka security settings cannot be used; one line that names the setting, never a secret."""


@dataclass(frozen=True)
class KafkaSecurity:
    """Kafka client security. PLAINTEXT (the default) is what the embedded broker speaks."""

    protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism = "PLAIN"
    username: str | None = None
    password: SecretStr | None = None
    ca_file: Path | None = None
    """PEM bundle of the CAs that signed the brokers' certificates (None: the system's trust store)."""
    cert_file: Path | None = None
    """Client certificate for mutual TLS (PEM), with `key_file`."""
    key_file: Path | None = None
    check_hostname: bool = True
    password_source: str = field(default=PASSWORD_ENV, repr=False, compare=False)
    """Name of the variable the password came from: what an error about it names."""

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise KafkaSecurityError(f"kafka security_protocol (${ENV_KEYS['security_protocol']}) {self.protocol!r}: "
                                     f"use one of {', '.join(PROTOCOLS)}")
        if self.sasl_mechanism not in MECHANISMS:
            raise KafkaSecurityError(f"kafka sasl_mechanism (${ENV_KEYS['sasl_mechanism']}) {self.sasl_mechanism!r}: "
                                     f"use one of "
                                     f"{', '.join(MECHANISMS)}")
        if isinstance(self.password, str):
            object.__setattr__(self, "password", SecretStr(self.password))
        if self.password is not None:
            register(self.password.get_secret_value())
        if self.sasl:
            if not self.username:
                raise KafkaSecurityError(f"kafka security_protocol {self.protocol} needs a username "
                                         f"(kafka.username or ${ENV_KEYS['username']})")
            if self.password is None or not self.password.get_secret_value():
                raise KafkaSecurityError(f"kafka security_protocol {self.protocol} needs a password: "
                                         f"${self.password_source} is not set")
        if (self.cert_file is None) != (self.key_file is None):
            raise KafkaSecurityError("kafka cert_file and key_file go together (mutual TLS): set both or neither")
        if self.ssl:
            for name in ("ca_file", "cert_file", "key_file"):
                path = getattr(self, name)
                if path is not None and not Path(path).is_file():
                    raise KafkaSecurityError(f"kafka {name} {path}: no such file")
        elif self.ca_file or self.cert_file:
            raise KafkaSecurityError(f"kafka ca_file/cert_file are TLS settings, but security_protocol is "
                                     f"{self.protocol}: use SSL or SASL_SSL")

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def ssl(self) -> bool:
        return self.protocol.endswith("SSL")

    def ssl_context(self) -> SSLContext | None:
        """The TLS context (None for a plaintext protocol); a bad PEM file is a one-line error naming it."""
        if not self.ssl:
            return None
        from aiokafka.helpers import create_ssl_context

        try:
            ctx = create_ssl_context(cafile=str(self.ca_file) if self.ca_file else None,
                                     certfile=str(self.cert_file) if self.cert_file else None,
                                     keyfile=str(self.key_file) if self.key_file else None)
        except (SSLError, OSError) as err:
            files = ", ".join(f"{n} {p}" for n in ("ca_file", "cert_file", "key_file")
                              if (p := getattr(self, n)) is not None)
            raise KafkaSecurityError(f"kafka TLS files ({files}) cannot be loaded: {err}") from None
        ctx.check_hostname = self.check_hostname
        return ctx

    def aiokafka_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for AIOKafkaProducer/Consumer/Client/AdminClient."""
        kw: dict[str, Any] = {"security_protocol": self.protocol}
        if self.ssl:
            kw["ssl_context"] = self.ssl_context()
        if self.sasl:
            assert self.password is not None
            kw.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.username,
                      sasl_plain_password=self.password.get_secret_value())
        return kw

    def faust_credentials(self) -> CredentialsT | None:
        """`faust.App(broker_credentials=...)`; None for PLAINTEXT."""
        import faust

        if self.sasl:
            assert self.password is not None
            return faust.SASLCredentials(username=self.username, password=self.password.get_secret_value(),
                                         mechanism=self.sasl_mechanism, ssl_context=self.ssl_context())
        if self.ssl:
            return faust.SSLCredentials(self.ssl_context())
        return None

    def describe(self) -> str:
        """For logs: protocol, mechanism and user; never the password."""
        parts: list[str] = [self.protocol]
        if self.sasl:
            parts.append(f"{self.sasl_mechanism} as {self.username}")
        if self.ssl:
            parts.append(f"CA {self.ca_file or 'system'}"
                         + (f", client cert {self.cert_file}" if self.cert_file else "")
                         + ("" if self.check_hostname else ", hostname not checked"))
        return ", ".join(parts)

    @classmethod
    def from_sources(cls, file: Mapping[str, Any] | None = None,
                     environ: Mapping[str, str] | None = None) -> KafkaSecurity:
        """From the config's `[kafka]` table (`file`) with `SPENDWATCH_KAFKA_*` variables overriding it.
        The password is never in the file: it is read from the variable `file["password_env"]` names
        (default SPENDWATCH_KAFKA_PASSWORD)."""
        env = os.environ if environ is None else environ
        values = {k: v for k, v in (file or {}).items() if v is not None}
        if "password" in values:
            raise KafkaSecurityError("kafka.password: the password is never in the config file; set "
                                     "kafka.password_env to the name of the environment variable that holds it")
        for key, var in ENV_KEYS.items():
            if env.get(var):
                values[key] = env[var]
        source = str(values.pop("password_env", None) or PASSWORD_ENV)
        check = values.pop("check_hostname", True)
        if isinstance(check, str):
            if check.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise KafkaSecurityError(f"${ENV_KEYS['check_hostname']} {check!r}: use true or false")
            check = check.lower() in ("1", "true", "yes")
        password = env.get(source)
        return cls(protocol=str(values.get("security_protocol", "PLAINTEXT")).upper(),  # type: ignore[arg-type]
                   sasl_mechanism=str(values.get("sasl_mechanism", "PLAIN")).upper(),  # type: ignore[arg-type]
                   username=values.get("username"), password=SecretStr(password) if password else None,
                   ca_file=_path(values.get("ca_file")), cert_file=_path(values.get("cert_file")),
                   key_file=_path(values.get("key_file")), check_hostname=bool(check), password_source=source)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KafkaSecurity:
        """What a client built without explicit settings uses: the `SPENDWATCH_KAFKA_*` variables
        (none set: PLAINTEXT)."""
        return cls.from_sources(None, environ)


def _path(value: Any) -> Path | None:
    return Path(value).expanduser() if value else None


def kafka_kwargs(security: KafkaSecurity | None) -> dict[str, Any]:
    """aiokafka keyword arguments for `security`, or for the environment's settings when None."""
    return (security if security is not None else KafkaSecurity.from_env()).aiokafka_kwargs()
