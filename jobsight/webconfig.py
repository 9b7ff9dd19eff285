"""``--web.config.file``: TLS and basic auth for the exporters, in Prometheus exporter-toolkit's format.

The same file node_exporter, dcgm-exporter and Prometheus itself read::

    tls_server_config:
      cert_file: server.crt          # relative paths are relative to this file's directory
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # or NoClientCert (default), RequestClientCert,
                                                     # RequireAnyClientCert, VerifyClientCertIfGiven
      client_ca_file: ca.crt
      min_version: TLS12             # TLS10 … TLS13 (default TLS12)
      max_version: TLS13
    http_server_config:
      headers: {X-Frame-Options: deny}
    basic_auth_users:
      prometheus: $2y$10$…           # bcrypt hashes (htpasswd -nBC 10 "" | tr -d ':\\n')

What Go's TLS stack offers and Python's does not is refused by name, not ignored: ``cipher_suites``
(Go names), ``curve_preferences``, ``client_allowed_sans``, ``http2``. A file that cannot be used
raises :class:`ConfigError` naming the key and why, at start-up.

Certificates are read again when their files change (checked at most every ``reload_seconds``),
so a cert-manager renewal needs no restart: new connections get the new certificate.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from jobsight.errors import ConfigError

_TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                 "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_UNSUPPORTED_TLS = ("cipher_suites", "curve_preferences", "client_allowed_sans",
                    "prefer_server_cipher_suites")
_TLS_KEYS = {"cert_file", "key_file", "cert", "key", "client_auth_type", "client_ca_file", "client_ca",
             "min_version", "max_version", *_UNSUPPORTED_TLS}
# A bcrypt check costs ~50-100 ms by design; a scrape every 15 s must not pay it each time. The
# cache holds a keyed hash of (user, password) that was accepted, never the password.
_CACHE_MAX = 64
# Compared against for an unknown user, so a wrong user name costs as much time as a wrong password.
_DUMMY_HASH = b"$2b$10$CwTycUXWue0Thq9StjUM0uJ8DPLKXWbhI2w8JhUoJgu3bRwDEu6fO"


@dataclass
class WebConfig:
    """A loaded web config: :meth:`ssl_context` (None: plain HTTP) and :meth:`authorized`."""

    path: Path | None
    users: dict[str, bytes] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    _context: ssl.SSLContext | None = None
    _cert_files: tuple[Path, ...] = ()
    _tls: Mapping[str, Any] = field(default_factory=dict)
    _mtimes: tuple[float, ...] = ()
    _checked: float = 0.0
    reload_seconds: float = 30.0
    clock: Callable[[], float] = time.monotonic
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _accepted: dict[bytes, None] = field(default_factory=dict)
    _secret: bytes = field(default_factory=lambda: os.urandom(32))

    @property
    def tls(self) -> bool:
        return self._context is not None

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server context (the same object across reloads: certificates are replaced in it)."""
        self.reload_if_changed()
        return self._context

    def reload_if_changed(self) -> None:
        if self._context is None or self.clock() - self._checked < self.reload_seconds:
            return
        with self._lock:
            self._checked = self.clock()
            mtimes = _mtimes(self._cert_files)
            if mtimes == self._mtimes:
                return
            try:
                _load_certs(self._context, self._tls, self.path)
            except ConfigError:
                return  # a renewal caught half-written: keep serving the old certificate, try again
            self._mtimes = mtimes

    def authorized(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header value passes basic auth (always, without users)."""
        if not self.users:
            return True
        if not authorization or authorization[:6].lower() != "basic ":
            return False
        try:
            decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
            user, sep, password = decoded.partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        if not sep:
            return False
        key = hmac.new(self._secret, f"{user}\0{password}".encode(), hashlib.sha256).digest()
        with self._lock:
            if key in self._accepted:
                return True
        import bcrypt

        hashed = self.users.get(user)
        try:
            ok = bcrypt.checkpw(password.encode(), hashed if hashed is not None else _DUMMY_HASH)
        except ValueError:
            ok = False
        ok = ok and hashed is not None
        if ok:
            with self._lock:
                if len(self._accepted) >= _CACHE_MAX:
                    self._accepted.pop(next(iter(self._accepted)))
                self._accepted[key] = None
        return ok


def _mtimes(paths: tuple[Path, ...]) -> tuple[float, ...]:
    out = []
    for path in paths:
        try:
            out.append(path.stat().st_mtime)
        except OSError:
            out.append(-1.0)
    return tuple(out)


def _resolve(base: Path | None, value: Any, key: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"web config: tls_server_config.{key} must be a file name")
    path = Path(value)
    return path if path.is_absolute() or base is None else base.parent / path


def _load_certs(context: ssl.SSLContext, tls: Mapping[str, Any], path: Path | None) -> None:
    cert = _resolve(path, tls.get("cert_file"), "cert_file")
    key = _resolve(path, tls.get("key_file"), "key_file")
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"web config: cannot load {cert} / {key}: {exc}") from exc


def load_web_config(path: Path | str | None, *, clock: Callable[[], float] = time.monotonic,
                    reload_seconds: float = 30.0) -> WebConfig:
    """Read ``path`` (None or an empty file: plain HTTP, no auth). Raises :class:`ConfigError`."""
    if path is None:
        return WebConfig(None)
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"web config {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"web config {path}: expected a mapping")
    unknown = set(raw) - {"tls_server_config", "http_server_config", "basic_auth_users"}
    if unknown:
        raise ConfigError(f"web config {path}: unknown keys {sorted(unknown)}")
    config = WebConfig(path, clock=clock, reload_seconds=reload_seconds)
    users = raw.get("basic_auth_users") or {}
    if not isinstance(users, dict):
        raise ConfigError(f"web config {path}: basic_auth_users must map user names to bcrypt hashes")
    for user, hashed in users.items():
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise ConfigError(f"web config {path}: basic_auth_users.{user} is not a bcrypt hash")
        # Go and htpasswd write $2y$; Python's bcrypt checks $2b$, the same algorithm.
        config.users[str(user)] = ("$2b$" + hashed[4:]).encode()
    http = raw.get("http_server_config") or {}
    if not isinstance(http, dict):
        raise ConfigError(f"web config {path}: http_server_config must be a mapping")
    if http.get("http2"):
        raise ConfigError(f"web config {path}: http_server_config.http2 is not supported (HTTP/1.1 only)")
    config.headers = {str(k): str(v) for k, v in (http.get("headers") or {}).items()}
    tls = raw.get("tls_server_config")
    if tls:
        config._context, config._cert_files = _tls_context(tls, path)
        config._tls = tls
        config._mtimes = _mtimes(config._cert_files)
        config._checked = clock()
    return config


def _tls_context(tls: Any, path: Path) -> tuple[ssl.SSLContext, tuple[Path, ...]]:
    if not isinstance(tls, dict):
        raise ConfigError(f"web config {path}: tls_server_config must be a mapping")
    unknown = set(tls) - _TLS_KEYS
    if unknown:
        raise ConfigError(f"web config {path}: unknown tls_server_config keys {sorted(unknown)}")
    for key in _UNSUPPORTED_TLS:
        if tls.get(key):
            raise ConfigError(f"web config {path}: tls_server_config.{key} is not supported by jobsight "
                              "(Python's TLS stack); remove it")
    if tls.get("cert") or tls.get("key") or tls.get("client_ca"):
        raise ConfigError(f"web config {path}: inline cert/key/client_ca are not supported; use *_file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for key, attr in (("min_version", "minimum_version"), ("max_version", "maximum_version")):
        value = tls.get(key)
        if value is None:
            continue
        if value not in _TLS_VERSIONS:
            raise ConfigError(f"web config {path}: tls_server_config.{key} must be one of "
                              f"{sorted(_TLS_VERSIONS)}")
        setattr(context, attr, _TLS_VERSIONS[value])
    if tls.get("min_version") is None:
        context.minimum_version = ssl.TLSVersion.TLSv1_2
    auth_type = tls.get("client_auth_type", "NoClientCert")
    if auth_type not in _CLIENT_AUTH:
        raise ConfigError(f"web config {path}: tls_server_config.client_auth_type must be one of "
                          f"{sorted(_CLIENT_AUTH)}")
    _load_certs(context, tls, path)
    files = [_resolve(path, tls.get("cert_file"), "cert_file"),
             _resolve(path, tls.get("key_file"), "key_file")]
    ca_file = tls.get("client_ca_file")
    if auth_type in ("RequireAnyClientCert", "RequestClientCert") and ca_file is None:
        # Go accepts any client certificate here; Python can only verify against a CA.
        raise ConfigError(f"web config {path}: client_auth_type {auth_type} needs client_ca_file in jobsight")
    if auth_type != "NoClientCert":
        if ca_file is None:
            raise ConfigError(f"web config {path}: client_auth_type {auth_type} needs client_ca_file")
        ca = _resolve(path, ca_file, "client_ca_file")
        try:
            context.load_verify_locations(cafile=ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"web config {path}: cannot load client_ca_file {ca}: {exc}") from exc
        files.append(ca)
    context.verify_mode = _CLIENT_AUTH[auth_type]
    return context, tuple(files)
