"""Grafana's HTTP API, from the controller: health, a datasource's health, a dashboard."""

from __future__ import annotations

from typing import Any

import requests


class GrafanaAPI:
    def __init__(self, base_url: str, user: str, password: str, *, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.auth = (user, password)
        self.timeout = timeout

    def health(self) -> dict[str, Any]:
        response = requests.get(f"{self.base_url}/api/health", timeout=self.timeout)
        response.raise_for_status()
        return dict(response.json())

    def datasource_health(self, uid: str) -> tuple[int, dict[str, Any]]:
        response = requests.get(
            f"{self.base_url}/api/datasources/uid/{uid}/health", auth=self.auth, timeout=self.timeout
        )
        return response.status_code, dict(response.json())

    def dashboard(self, uid: str) -> tuple[int, dict[str, Any]]:
        response = requests.get(
            f"{self.base_url}/api/dashboards/uid/{uid}", auth=self.auth, timeout=self.timeout
        )
        return response.status_code, dict(response.json())
