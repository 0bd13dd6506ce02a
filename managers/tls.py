"""TLS to the backing services: the client side of MariaDB's, Redis's and Kafka's connections.

Each of those sections has a ``tls`` mapping (managers/config.py): ``ca_file`` (the CA that
signed the server's certificate; empty: plaintext, as before), ``cert_file`` and
``key_file`` (a client certificate, for servers that ask for one; both or neither) and
``verify_hostname`` (on by default). ``client_context`` turns one into the
``ssl.SSLContext`` every connection of that service uses: TLS 1.2 or newer, the server's
certificate verified against ``ca_file`` and, unless turned off, its name or address
against the host the client connects to. config.load builds each once, so a missing or
unreadable file, or a certificate that does not match its key, stops the service at start
with a message naming the key, before any connection is tried.

Redis is the exception to "a context": redis-py builds its own from file names
(``redis_options``), checking the same things.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, TypedDict

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


class TLSError(ValueError):
    """A ``tls`` section that cannot make a context; the message says which file and why."""


class TLSConfig(TypedDict):
    """A service's ``tls`` section, as config.load returns it (paths made absolute)."""

    ca_file: str  # "": plaintext
    cert_file: str
    key_file: str
    verify_hostname: bool


def enabled(cfg: TLSConfig) -> bool:
    return bool(cfg["ca_file"])


def client_context(cfg: TLSConfig) -> ssl.SSLContext | None:
    """The context of a service's connections, or None for plaintext (no ``ca_file``)."""
    if not enabled(cfg):
        return None
    if bool(cfg["cert_file"]) != bool(cfg["key_file"]):
        raise TLSError("cert_file and key_file go together: set both, or neither")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # certificates required, names checked
    context.minimum_version = MINIMUM_VERSION
    context.check_hostname = cfg["verify_hostname"]
    _readable(cfg["ca_file"], "ca_file")
    try:
        context.load_verify_locations(cafile=cfg["ca_file"])
    except ssl.SSLError as exc:
        raise TLSError(f"ca_file {cfg['ca_file']}: not a PEM certificate ({exc.reason or exc})") from None
    if cfg["cert_file"]:
        _readable(cfg["cert_file"], "cert_file")
        _readable(cfg["key_file"], "key_file")
        try:
            context.load_cert_chain(cfg["cert_file"], cfg["key_file"], password=_no_password)
        except ssl.SSLError as exc:
            raise TLSError(
                f"cert_file {cfg['cert_file']} and key_file {cfg['key_file']}: not a PEM certificate and "
                f"its unencrypted private key ({exc.reason or exc})"
            ) from None
    return context


def redis_options(cfg: TLSConfig) -> dict[str, Any]:
    """redis-py's connection options for ``cfg`` (it makes its context from these), for one
    server and for a cluster alike; empty for plaintext."""
    if not enabled(cfg):
        return {}
    return {
        "ssl_ca_certs": cfg["ca_file"],
        "ssl_certfile": cfg["cert_file"] or None,
        "ssl_keyfile": cfg["key_file"] or None,
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": cfg["verify_hostname"],
        "ssl_min_version": MINIMUM_VERSION,
    }


def kafka_options(cfg: TLSConfig) -> dict[str, Any]:
    """aiokafka's options for every client (producer, consumers, admin); empty for plaintext."""
    context = client_context(cfg)
    if context is None:
        return {}
    return {"security_protocol": "SSL", "ssl_context": context}


def _readable(path: str, key: str) -> None:
    try:
        with Path(path).open("rb"):
            pass
    except OSError as exc:
        raise TLSError(f"{key} {path}: {exc.strerror}") from None


def _no_password() -> str:
    """An encrypted key would make OpenSSL prompt on the terminal; refuse it instead."""
    raise TLSError("the key is encrypted: give an unencrypted key file (readable by the service only)")
