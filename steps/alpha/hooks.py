"""Team Alpha's contributions to earlier teams' extension points."""

from __future__ import annotations

from apply.extensions import hookimpl
from steps.alpha.tls import Paths
from steps.base.flintlock import TLSFiles


@hookimpl
def flintlock_tls_files(settings: object) -> TLSFiles:
    tls = settings.alpha.tls  # type: ignore[attr-defined]
    paths = Paths(tls.cert_dir)
    client_ca = paths.cert("ca") if tls.client_auth else None
    return TLSFiles(paths.cert("server"), paths.key("server"), client_ca)
