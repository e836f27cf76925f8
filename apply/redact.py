"""Masking of secrets in anything the suite logs, attaches or raises.

Two sources of secrets: values known to be secret (given per call or per host), and
shapes that are secret whatever their value (PEM private keys, ``password=...``,
``token=...``, ``secret=...``, ``Authorization:`` headers). Known values are replaced
first, longest first, so a secret that contains another is masked whole.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "********"

# Shorter values are too likely to occur by chance in ordinary output ("1", "yes") and
# masking them would make logs unreadable without protecting anything.
MIN_SECRET_LENGTH = 4

_PEM_PRIVATE_KEY = re.compile(
    r"-----BEGIN ((?:[A-Z0-9]+ )*PRIVATE KEY)-----.*?(?:-----END \1-----|\Z)",
    re.DOTALL,
)
# key=value / key: value for keys that are secret by name; the value ends at whitespace,
# a quote, '&' (query strings), ',' or ';'.
_SECRET_ASSIGNMENT = re.compile(
    r"""(?P<key>\b[\w.-]*(?:password|passwd|token|secret|api[_-]?key)[\w.-]*)"""
    r"""(?P<sep>["']?\s*[=:]\s*["']?)(?P<value>[^\s"'&,;]+)""",
    re.IGNORECASE,
)
_AUTHORIZATION = re.compile(
    r"(?P<head>\b(?:proxy-)?authorization\s*:\s*)(?:(?P<scheme>[A-Za-z][\w-]*)\s+)?(?P<value>[^\s\"']+)",
    re.IGNORECASE,
)
# user:password@host in URLs.
_URL_CREDENTIALS = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^\s:/@]+:)(?P<value>[^\s@/]+)(?=@)")


class Redactor:
    """Replace secrets in text with a fixed mask.

    >>> r = Redactor(["hunter22"])
    >>> r.redact("login with hunter22, token=abc123")
    'login with ********, token=********'
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str) -> None:
        """Remember a secret value; values shorter than MIN_SECRET_LENGTH are ignored."""
        if not isinstance(secret, str):
            raise TypeError(f"Redactor.add expects a str, got {type(secret).__name__}")
        secret = secret.strip()
        if len(secret) >= MIN_SECRET_LENGTH:
            self._secrets.add(secret)

    def extended(self, secrets: Iterable[str]) -> Redactor:
        """A new Redactor knowing this one's secrets plus ``secrets`` (per-call secrets)."""
        child = Redactor(self._secrets)
        for secret in secrets:
            child.add(secret)
        return child

    def __len__(self) -> int:
        return len(self._secrets)

    def redact(self, text: str | bytes | None) -> str:
        """Return ``text`` with every known secret and secret-shaped value masked."""
        if text is None:
            return ""
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, MASK)
        text = _PEM_PRIVATE_KEY.sub(
            lambda m: f"-----BEGIN {m.group(1)}-----\n{MASK}\n-----END {m.group(1)}-----", text
        )
        text = _AUTHORIZATION.sub(
            lambda m: m.group("head") + (m.group("scheme") + " " if m.group("scheme") else "") + MASK,
            text,
        )
        text = _SECRET_ASSIGNMENT.sub(lambda m: m.group("key") + m.group("sep") + MASK, text)
        text = _URL_CREDENTIALS.sub(lambda m: m.group("head") + MASK, text)
        return text
