"""A Prometheus server's HTTP API, from the controller: readiness, scrape targets, PromQL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import requests


class PrometheusError(Exception):
    pass


@dataclass(frozen=True)
class ScrapeTarget:
    job: str
    url: str
    health: str
    last_error: str


class PrometheusAPI:
    """The HTTP API of one Prometheus server (``http://address:port``)."""

    def __init__(self, base_url: str, *, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def ready(self) -> tuple[int, str]:
        """(HTTP status, body) of /-/ready; status 0 while nothing accepts connections
        (a restarted server opens its port only after loading its TSDB)."""
        try:
            response = requests.get(f"{self.base_url}/-/ready", timeout=self.timeout)
        except requests.ConnectionError as exc:
            return 0, str(exc)
        return response.status_code, response.text.strip()

    def _api(self, path: str, params: dict[str, str] | None = None) -> Any:
        response = requests.get(f"{self.base_url}/api/v1/{path}", params=params, timeout=self.timeout)
        body = response.json()
        if response.status_code != 200 or body.get("status") != "success":
            raise PrometheusError(f"GET /api/v1/{path} {params or ''}: {response.status_code} {body}")
        return body["data"]

    def targets(self) -> list[ScrapeTarget]:
        data = self._api("targets", {"state": "active"})
        return [
            ScrapeTarget(
                job=target["labels"].get("job", ""),
                url=target.get("scrapeUrl", ""),
                health=target.get("health", ""),
                last_error=target.get("lastError", ""),
            )
            for target in data["activeTargets"]
        ]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's vector result: [{"metric": {...}, "value": [ts, "v"]}, ...]."""
        data = self._api("query", {"query": promql})
        if data.get("resultType") != "vector":
            raise PrometheusError(f"query {promql!r} returned {data.get('resultType')}, not a vector")
        return list(data["result"])
