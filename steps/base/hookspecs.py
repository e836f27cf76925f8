"""Team Base's extension points: what later teams contribute to its flintlock unit."""

from __future__ import annotations

from apply.extensions import hookspec


@hookspec(firstresult=True)
def flintlock_tls_files(settings: object) -> object | None:
    """The TLS material flintlockd serves (`steps.base.flintlock.TLSFiles`): the team that
    issues the certificates says where they are. Base renders the unit with them."""
