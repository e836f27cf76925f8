"""The dashboard's HTTP API and pages (FastAPI, which generates the OpenAPI document from the
routes and their response models; Jinja2 renders the pages).

Every view is computed per request from the published reports and from live queries
(Prometheus, flintlock's state), so what the page shows is what the API answers.
"""

from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field

from . import __version__, chart, health, reports
from .config import DashboardConfig

TEMPLATES = Path(__file__).parent / "templates"
NOT_PUBLISHED = {
    503: {"description": "Nothing published yet: the controller publishes its reports after each run"}
}


# -- response models (their JSON schemas are the OpenAPI document's components) -------------


class TeamStatus(BaseModel):
    name: str
    phase: int
    requires: list[str]
    tasks: list[str]
    implemented: bool = Field(description="Whether the suite has the team's test module")
    outcome: str = Field(
        description="green, waived, not applicable, failed, blocked, not implemented, or pending "
        "(nothing recorded yet)"
    )
    at: str | None = Field(None, nullable=True, description="When the outcome was recorded (ISO 8601, UTC)")
    source: str | None = Field(None, nullable=True, description="recorded (a run's verdict) or signal")
    first_failure: str | None = Field(None, nullable=True)
    signal: str | None = Field(None, nullable=True, description="The team's latest completion signal")
    issues: list[str]


class Status(BaseModel):
    target: str = Field(description="The target the controller recorded the verdicts for")
    published_at: str
    last_run_status: str | None = Field(None, nullable=True, description="The last completed run's outcome")
    last_run_text: str | None = Field(None, nullable=True)
    counts: dict[str, int] = Field(description="Teams per outcome")
    teams: list[TeamStatus]


class Signal(BaseModel):
    team: str
    verdict: str
    phase: int
    duration: float
    issues: list[str]
    next_teams: list[str]
    at: str
    text: str


class Span(BaseModel):
    team: str
    phase: int
    outcome: str
    start: float = Field(description="Seconds since the epoch (the controller's clock)")
    end: float
    duration: float


class Timeline(BaseModel):
    run: str = Field(description="in progress, completed or none")
    title: str
    origin: float | None = Field(None, nullable=True)
    makespan: float
    spans: list[Span]
    last_run_status: str | None = Field(None, nullable=True, description="Set for a completed run")
    last_run_text: str | None = Field(None, nullable=True)


class PrometheusStatus(BaseModel):
    url: str
    reachable: bool
    error: str | None = Field(None, nullable=True)


class ScrapeTarget(BaseModel):
    job: str
    instance: str
    up: bool


class NodeHealth(BaseModel):
    instance: str
    load1: float | None = Field(None, nullable=True)
    memory_available_bytes: float | None = Field(None, nullable=True)
    memory_total_bytes: float | None = Field(None, nullable=True)
    root_available_bytes: float | None = Field(None, nullable=True)
    root_size_bytes: float | None = Field(None, nullable=True)
    uptime_seconds: float | None = Field(None, nullable=True)


class FleetHost(BaseModel):
    name: str
    address: str
    roles: list[str]


class Hosts(BaseModel):
    prometheus: PrometheusStatus
    targets: list[ScrapeTarget]
    nodes: list[NodeHealth]
    fleet: list[FleetHost]


class UnitState(BaseModel):
    unit: str
    load_state: str | None = Field(None, nullable=True)
    active_state: str | None = Field(None, nullable=True)
    sub_state: str | None = Field(None, nullable=True)
    error: str | None = Field(None, nullable=True)


class MicroVM(BaseModel):
    namespace: str
    name: str
    uid: str
    pid: int | None = Field(None, nullable=True)
    running: bool


class MicroVMs(BaseModel):
    flintlockd: UnitState
    state_dir: str
    state_dir_present: bool
    microvms: list[MicroVM]
    error: str | None = Field(None, nullable=True)


# -- the application --------------------------------------------------------------------------


def create_app(config: DashboardConfig) -> FastAPI:
    app = FastAPI(
        title="hvsuite dashboard",
        version=__version__,
        description="Build status per team, completion signals, the timeline, host health and "
        "microVMs of this hypervisor host, as the hvsuite controller last published them.",
        # The stock documentation pages load their scripts from a CDN; /api/docs is served here.
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    templates = Jinja2Templates(directory=str(TEMPLATES))
    prometheus = health.Prometheus(config.prometheus_url, config.prometheus_timeout)

    def published() -> dict[str, Any]:
        try:
            return reports.load(config.data_dir)
        except reports.ReportsError as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from exc

    def status_view(document: dict[str, Any]) -> dict[str, Any]:
        board = reports.team_board(document)
        return {
            "target": str(document.get("target", "")),
            "published_at": str(document.get("published_at", "")),
            **reports.last_run(document),
            "counts": reports.counts(board),
            "teams": board,
        }

    def hosts_view(document: dict[str, Any]) -> dict[str, Any]:
        return {**health.host_health(prometheus), "fleet": document["fleet"]}

    def microvms_view() -> dict[str, Any]:
        return health.microvms(config.flintlock_state_dir, config.flintlock_unit)

    @app.get("/api/status", response_model=Status, responses=NOT_PUBLISHED, tags=["status"])
    def get_status() -> dict[str, Any]:
        """Every team of the plan with its latest outcome and completion signal."""
        return status_view(published())

    @app.get("/api/signals", response_model=list[Signal], responses=NOT_PUBLISHED, tags=["status"])
    def get_signals(limit: int = Query(50, ge=1, le=1000, description="How many, newest first")) -> Any:
        """The latest completion signals, newest first."""
        return reports.signal_board(published(), limit)

    @app.get("/api/timeline", response_model=Timeline, responses=NOT_PUBLISHED, tags=["status"])
    def get_timeline() -> dict[str, Any]:
        """The latest run's teams on one time axis (the run going on, else the last completed one)."""
        return reports.timeline_view(published())

    @app.get("/api/hosts", response_model=Hosts, responses=NOT_PUBLISHED, tags=["hosts"])
    def get_hosts() -> dict[str, Any]:
        """Scrape targets and node figures from Prometheus, and the fleet with its roles."""
        return hosts_view(published())

    @app.get("/api/microvms", response_model=MicroVMs, tags=["hosts"])
    def get_microvms() -> dict[str, Any]:
        """flintlockd's state and the microVMs in its state directory."""
        return microvms_view()

    @app.get("/", response_class=HTMLResponse, responses=NOT_PUBLISHED, tags=["pages"])
    def dashboard(request: Request) -> Any:
        """The dashboard page."""
        document = published()
        timeline = reports.timeline_view(document)
        return templates.TemplateResponse(
            "dashboard.html.j2",
            {
                "request": request,
                "status": status_view(document),
                "signals": reports.signal_board(document, 20),
                "timeline": timeline,
                "chart": chart.geometry(timeline),
                "hosts": hosts_view(document),
                "microvms": microvms_view(),
            },
        )

    @app.get("/api/docs", response_class=HTMLResponse, tags=["pages"])
    def api_docs(request: Request) -> Any:
        """This API's documentation, rendered from its OpenAPI document."""
        return templates.TemplateResponse("api-docs.html.j2", {"request": request, "spec": app.openapi()})

    return app
