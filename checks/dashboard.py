"""Team Golf-4's dashboard from the controller: its HTTP API, its OpenAPI document checked with
standard validators, the page in a real headless browser, and the outcomes the controller
recorded, worked out here on their own to hold the dashboard to.

The validators (openapi-spec-validator, openapi-core) and the browser driver (playwright,
driving Debian's chromium) are imported where they are used: only these checks need them.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import datetime
from html.parser import HTMLParser
from typing import Any

import requests

from apply.poll import eventually

# Debian's chromium, started fresh for each view (its own profile directory, no sync, no
# component updates, no background traffic).
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DRY_RUN = "checked"


class DashboardClient:
    """The dashboard's HTTP API at ``http://address:port``."""

    def __init__(self, base_url: str, *, timeout: float = 15.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()

    def get(self, path: str) -> requests.Response:
        return self.session.get(f"{self.base_url}{path}", timeout=self.timeout)

    def json(self, path: str) -> Any:
        response = self.get(path)
        assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text[:500]}"
        return response.json()

    def wait_until_serving(self, timeout: float = 60.0) -> int:
        """The HTTP status of the OpenAPI document once the service answers (a restarted
        service takes a moment to listen); 0 if nothing answered within ``timeout``."""

        def probe() -> int:
            try:
                return self.get("/openapi.json").status_code
            except requests.RequestException:
                return 0

        return eventually(probe, lambda status: status == 200, timeout=timeout)


def _when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


def expected_outcomes(document: dict[str, Any]) -> dict[str, str]:
    """Each plan team's latest outcome from the controller's records in ``document`` (the
    published one): its recorded verdict or its latest completion signal, whichever is newer
    (recorded wins a tie: the verdicts are written after a run's signals; dry-run signals
    verify nothing and do not count); with neither, "not implemented" for a team without a
    module and "pending" for one that has not settled yet."""
    newest: dict[str, tuple[datetime, int, str]] = {}
    for name, entry in document["state"].items():
        newest[name] = (_when(entry["at"]), 1, entry["verdict"])
    for signal in document["signals"]:
        if signal["verdict"] == DRY_RUN:
            continue
        candidate = (_when(signal["at"]), 0, signal["verdict"])
        if signal["team"] not in newest or candidate > newest[signal["team"]]:
            newest[signal["team"]] = candidate
    outcomes = {}
    for team in document["plan"]:
        if team["name"] in newest:
            outcomes[team["name"]] = newest[team["name"]][2]
        else:
            outcomes[team["name"]] = "pending" if team["implemented"] else "not implemented"
    return outcomes


# -- the OpenAPI document --------------------------------------------------------------------


def validate_document(spec: dict[str, Any]) -> str:
    """Raises unless ``spec`` is a valid OpenAPI document; returns its version."""
    from openapi_spec_validator import validate

    validate(spec)
    return str(spec["openapi"])


@dataclass(frozen=True)
class Answer:
    path: str
    status: int
    content_type: str
    problems: tuple[str, ...]


def answers(client: DashboardClient, spec: dict[str, Any]) -> list[Answer]:
    """Every GET operation of the document called without parameters, its status held to the
    documented ones and its body to the documented schema (openapi-core)."""
    from openapi_core import OpenAPI
    from openapi_core.contrib.requests import RequestsOpenAPIRequest, RequestsOpenAPIResponse

    openapi = OpenAPI.from_dict(spec)
    found = []
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            problems = []
            if method != "get":
                found.append(Answer(path, 0, "", (f"{method.upper()} is not exercised by this check",)))
                continue
            if any(p.get("in") == "path" for p in operation.get("parameters", [])):
                found.append(Answer(path, 0, "", ("path parameters are not exercised by this check",)))
                continue
            response = client.get(path)
            documented = set(operation.get("responses", {}))
            if str(response.status_code) not in documented:
                problems.append(f"status {response.status_code} is not documented ({sorted(documented)})")
            request = requests.Request("GET", f"{client.base_url}{path}").prepare()
            problems += [
                str(error)
                for error in openapi.iter_response_errors(
                    RequestsOpenAPIRequest(request), RequestsOpenAPIResponse(response)
                )
            ]
            found.append(
                Answer(path, response.status_code, response.headers.get("content-type", ""), tuple(problems))
            )
    return found


class _Operations(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: set[tuple[str, str]] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if "operation" in (values.get("class") or "").split() and values.get("data-path"):
            self.found.add((str(values.get("data-method")), str(values["data-path"])))


def documented_operations(html: str) -> set[tuple[str, str]]:
    """(method, path) of each operation the API docs page lists."""
    parser = _Operations()
    parser.feed(html)
    return parser.found


# -- the page in a browser ---------------------------------------------------------------------


@dataclass(frozen=True)
class PageView:
    status: int
    title: str
    # Each team row as shown: name -> outcome text.
    teams: dict[str, str]
    # Each bar of the timeline chart as laid out: (team, width, height) in CSS pixels.
    bars: list[tuple[str, float, float]]
    # The API docs page: (method, path) of each operation it shows.
    operations: set[tuple[str, str]]
    screenshot: bytes


def browse(base_url: str, *, timeout: float = 30.0, executable: str = CHROMIUM) -> PageView:
    """The dashboard and the API docs page as a headless chromium renders them."""
    from playwright.sync_api import sync_playwright

    milliseconds = timeout * 1000
    with (
        tempfile.TemporaryDirectory(prefix="hvsuite-golf4-chromium-") as profile,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=executable,
            headless=True,
            args=CHROMIUM_ARGS,
            timeout=milliseconds,
            viewport={"width": 1280, "height": 900},
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(milliseconds)
            response = page.goto(f"{base_url}/", wait_until="load")
            page.wait_for_selector("#team-board tr.team")
            teams = page.eval_on_selector_all(
                "#team-board tr.team",
                "rows => rows.map(row => [row.querySelector('.team-name').innerText,"
                " row.querySelector('.team-outcome').innerText])",
            )
            bars = page.eval_on_selector_all(
                "#timeline-chart rect.bar",
                "bars => bars.map(bar => { const box = bar.getBoundingClientRect();"
                " return [bar.dataset.team, box.width, box.height]; })",
            )
            title = page.title()
            screenshot = page.screenshot(full_page=True)
            page.goto(f"{base_url}/api/docs", wait_until="load")
            operations = page.eval_on_selector_all(
                ".operation", "items => items.map(item => [item.dataset.method, item.dataset.path])"
            )
        finally:
            browser.close()
    return PageView(
        status=response.status if response is not None else 0,
        title=title,
        teams={name.strip(): outcome.strip() for name, outcome in teams},
        bars=[(team, float(width), float(height)) for team, width, height in bars],
        operations={(method, path) for method, path in operations},
        screenshot=screenshot,
    )
