"""Signed values for the job pages: read-only links to one job (``/jobs/{id}?sig=…``) and the
session cookie the login form sets. Both are HMAC-SHA256 over a purpose, a subject and an
expiry, with the key from the ``pages.signing_key`` setting.

A link signature is ``<expiry>.<mac>``: anyone holding it may read that one job's page until the
expiry, which is how a failure notification opens the page without a token. A session value is
``<expiry>.<token fingerprint>.<mac>``; the fingerprint is itself keyed, so it says nothing about
the token, and a token removed from the configuration ends its sessions at once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from urllib.parse import quote

log = logging.getLogger("jobsight.api")

DEFAULT_LINK_SECONDS = 7 * 24 * 3600
_LINK = b"jobsight-job-link"
_SESSION = b"jobsight-session"
_FINGERPRINT = b"jobsight-token-fingerprint"
# Longer than any mac or expiry we write: a longer value is refused before any work.
_MAX_VALUE = 200


class BadSignature(Exception):
    """The value was not signed by this key for this subject, is malformed, or has expired."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


class Signer:
    """Signs and checks link and session values. ``clock`` gives wall-clock seconds."""

    def __init__(self, key: bytes, clock: Callable[[], float] = time.time) -> None:
        if len(key) < 32:
            raise ValueError("the signing key must be at least 32 bytes")
        self._key = key
        self._clock = clock

    @classmethod
    def from_setting(cls, key: str | None, clock: Callable[[], float] = time.time) -> Signer:
        """The configured key, or a random one for this process (links then die at a restart)."""
        if key is None:
            log.warning("no pages.signing_key is configured: signed job links and page sessions last only "
                        "until this API process restarts")
            return cls(secrets.token_bytes(32), clock)
        return cls(key.encode(), clock)

    def _mac(self, purpose: bytes, *parts: str) -> str:
        message = purpose + b"".join(b"\0" + part.encode() for part in parts)
        return _b64(hmac.new(self._key, message, hashlib.sha256).digest())

    def _expiry(self, value: str) -> int:
        if not value.isdigit() or len(value) > 12:
            raise BadSignature("malformed expiry")
        expires = int(value)
        if expires < self._clock():
            raise BadSignature("expired")
        return expires

    # -- links to one job -----------------------------------------------------------------------

    def sign_job(self, job_id: str, valid_seconds: float = DEFAULT_LINK_SECONDS) -> str:
        expires = int(self._clock() + valid_seconds)
        return f"{expires}.{self._mac(_LINK, job_id, str(expires))}"

    def check_job(self, job_id: str, sig: str) -> int:
        """The expiry of a valid signature for ``job_id``; :class:`BadSignature` otherwise."""
        if len(sig) > _MAX_VALUE or sig.count(".") != 1:
            raise BadSignature("malformed signature")
        expires_text, mac = sig.split(".")
        # The mac first, so a forged expiry learns nothing from the answer.
        if not hmac.compare_digest(mac, self._mac(_LINK, job_id, expires_text)):
            raise BadSignature("signature does not match")
        return self._expiry(expires_text)

    def job_url(self, base_url: str, job_id: str, valid_seconds: float = DEFAULT_LINK_SECONDS) -> str:
        """The page of ``job_id`` under ``base_url`` with a signature valid for ``valid_seconds``."""
        sig = self.sign_job(job_id, valid_seconds)
        return f"{base_url.rstrip('/')}/jobs/{quote(job_id, safe='')}?sig={sig}"

    # -- sessions -------------------------------------------------------------------------------

    def fingerprint(self, token: str) -> str:
        """A keyed digest of an API token: what a session names instead of the token."""
        return self._mac(_FINGERPRINT, token)[:32]

    def sign_session(self, token: str, valid_seconds: float) -> str:
        expires = int(self._clock() + valid_seconds)
        fingerprint = self.fingerprint(token)
        return f"{expires}.{fingerprint}.{self._mac(_SESSION, fingerprint, str(expires))}"

    def check_session(self, value: str) -> str:
        """The token fingerprint of a valid session value; :class:`BadSignature` otherwise."""
        if len(value) > _MAX_VALUE or value.count(".") != 2:
            raise BadSignature("malformed session")
        expires_text, fingerprint, mac = value.split(".")
        if not hmac.compare_digest(mac, self._mac(_SESSION, fingerprint, expires_text)):
            raise BadSignature("session signature does not match")
        self._expiry(expires_text)
        return fingerprint
