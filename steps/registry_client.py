"""Push an image to an OCI distribution (registry v2) endpoint over HTTP.

The subset of the distribution API a push needs: ping (`GET /v2/`), blob existence
(`HEAD /v2/<name>/blobs/<digest>`), a monolithic upload (`POST` then `PUT ?digest=`) and the
manifest (`PUT /v2/<name>/manifests/<reference>`). Blobs the registry already holds are not
sent again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urljoin

import requests

from steps.oci_image import Blob, OCIImage

_REPOSITORY = re.compile(
    r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$"
)
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


class RegistryError(Exception):
    """The registry refused or answered something the distribution API does not allow."""


@dataclass(frozen=True)
class PushResult:
    reference: str  # host:port/repository:tag
    digest: str
    uploaded: int  # blobs sent (the rest the registry already had)


class RegistryClient:
    def __init__(self, endpoint: str, *, timeout: float = 30.0, session: requests.Session | None = None):
        if not re.match(r"^https?://[^/]+$", endpoint):
            raise ValueError(f"registry endpoint {endpoint!r} must look like http://host:port (no path)")
        self.endpoint = endpoint
        self.timeout = timeout
        self.session = session or requests.Session()

    @property
    def authority(self) -> str:
        """host:port, as an image reference names the registry."""
        return self.endpoint.split("://", 1)[1]

    def _url(self, path: str) -> str:
        return f"{self.endpoint}{path}"

    def _expect(self, response: requests.Response, *codes: int) -> requests.Response:
        if response.status_code not in codes:
            raise RegistryError(
                f"{response.request.method} {response.url} answered {response.status_code}, "
                f"expected {' or '.join(map(str, codes))}: {response.text[:300]}"
            )
        return response

    def ping(self) -> str:
        """The API version the registry announces (`registry/2.0`)."""
        response = self._expect(self.session.get(self._url("/v2/"), timeout=self.timeout), 200)
        return response.headers.get("Docker-Distribution-API-Version", "")

    def has_blob(self, repository: str, digest: str) -> bool:
        response = self.session.head(self._url(f"/v2/{repository}/blobs/{digest}"), timeout=self.timeout)
        return self._expect(response, 200, 404).status_code == 200

    def upload_blob(self, repository: str, blob: Blob) -> None:
        start = self._expect(
            self.session.post(self._url(f"/v2/{repository}/blobs/uploads/"), timeout=self.timeout), 202
        )
        location = start.headers.get("Location")
        if not location:
            raise RegistryError(f"upload to {repository} started without a Location header")
        # Location may be relative and usually already carries a query (_state=...).
        upload_url = urljoin(self.endpoint + "/", location)
        separator = "&" if "?" in upload_url else "?"
        self._expect(
            self.session.put(
                f"{upload_url}{separator}digest={blob.digest}",
                data=blob.data,
                headers={"Content-Type": "application/octet-stream"},
                timeout=self.timeout,
            ),
            201,
        )

    def manifest_digest(self, repository: str, reference: str, media_type: str) -> str | None:
        response = self.session.head(
            self._url(f"/v2/{repository}/manifests/{reference}"),
            headers={"Accept": media_type},
            timeout=self.timeout,
        )
        if self._expect(response, 200, 404).status_code == 404:
            return None
        return response.headers.get("Docker-Content-Digest")

    def push(self, repository: str, tag: str, image: OCIImage) -> PushResult:
        if not _REPOSITORY.match(repository):
            raise ValueError(f"repository {repository!r} is not a valid name (lower case, a-z0-9._-/)")
        if not _TAG.match(tag):
            raise ValueError(f"tag {tag!r} is not a valid tag ([A-Za-z0-9_][A-Za-z0-9._-]*, up to 128)")
        uploaded = 0
        for blob in image.blobs:
            if not self.has_blob(repository, blob.digest):
                self.upload_blob(repository, blob)
                uploaded += 1
        response = self._expect(
            self.session.put(
                self._url(f"/v2/{repository}/manifests/{tag}"),
                data=image.manifest.data,
                headers={"Content-Type": image.manifest.media_type},
                timeout=self.timeout,
            ),
            201,
        )
        digest = response.headers.get("Docker-Content-Digest", image.digest)
        if digest != image.digest:
            raise RegistryError(f"registry stored manifest {digest}, expected {image.digest}")
        return PushResult(reference=f"{self.authority}/{repository}:{tag}", digest=digest, uploaded=uploaded)
