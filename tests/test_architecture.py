"""The layering docs/architecture.md describes, checked on the imports of every module.

A module may import from its own layer and the layers below it, never above; only the
views (dicomserver/services), the app factory, the CLI and the WSGI entry import Flask.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: Lowest first. A module not listed here fails the test: place it in a layer.
LAYERS: dict[str, tuple[str, ...]] = {
    "wire codec": ("dicomserver.multipart", "dicomserver.segments"),
    "blob stores": ("backends",),
    "DICOM vocabulary": (
        "dicomserver.settings",
        "dicomserver.errors",
        "dicomserver.transfer_syntax",
        "dicomserver.uids",
        "dicomserver.media",
        "dicomserver.dicomjson",
        "dicomserver.validation",
        "dicomserver.header",  # the raw-bytes reader of the STOW header (pydicom path: ingest)
        "dicomserver.searchable",
        "dicomserver.query_tags",
        "dicomserver.matching",
        "dicomserver.frames",
        "dicomserver.metrics",  # counters and timings the index and pipelines record
        "dicomserver.request_log",
        "dicomserver.partitions",  # a data partition's key and name, its name rule and 400s
    ),
    "index": ("dicomserver.index",),
    "pipelines": (
        "dicomserver.transcode",
        "dicomserver.stow_json",
        "dicomserver.ingest",
        "dicomserver.archive",
        "dicomserver.stow",
        "dicomserver.metadata_stream",
        "dicomserver.retrieve",
        "dicomserver.bulkdata",
        "dicomserver.render",
        "dicomserver.search",
        "dicomserver.browse",
        "dicomserver.changes",
        "dicomserver.changefeed_stream",  # the change feed as Server-Sent Events: the poller, the streams
        "dicomserver.request_json",
        "dicomserver.background",  # the background threads of a server process (operations, webhooks)
        "dicomserver.operations",
        "dicomserver.extended_query_tags",
        "dicomserver.export",
        "dicomserver.bulk_update",
        "dicomserver.events",  # webhook events: envelope, `record` (in the writer's transaction)
        "dicomserver.webhooks",  # webhook subscriptions, target checks, signatures
        "dicomserver.delivery",  # the webhook delivery thread
        "dicomserver.auth",
        "dicomserver.urls",
        "dicomserver.audit",
        "dicomserver.fhir_audit",
        "dicomserver.openapi",
        "dicomserver.importer",
        "dicomserver.verify",
        "dicomserver.workitems",  # UPS-RS: the state machine, search, subscriptions, state_changed
        "dicomserver.ups_events",  # UPS event channels: the per-process poller of event reports
        "dicomserver.storage_commitment",  # what the archive commits to (PS3.4 Annex J)
        "dicomserver.dimse",  # the DIMSE gateway's handlers: STOW's pipeline, QIDO's search
        "dicomserver.dimse_commitment",  # storage commitment's N-ACTION and N-EVENT-REPORT
        "dicomserver.dimse_transfer",  # the gateway's instances through pynetdicom: from files, into spools
        "dicomserver.dimse_status",  # DIMSE statuses as the gateway answers them
        "dicomserver.dimse_processes",  # the gateway as several processes on one port
    ),
    "views": (
        "dicomserver.services",
        "dicomserver.cli",
        "dicomserver.wsgi",
        "dicomserver.gunicorn_conf",
        "dicomserver.gunicorn_worker",
        "dicomserver",  # the app factory (dicomserver/__init__.py)
    ),
}
FLASK_ALLOWED = ("dicomserver.services", "dicomserver.cli", "dicomserver.wsgi", "dicomserver")
WEB_PACKAGES = ("flask", "werkzeug", "click")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer_of(module: str) -> int:
    """Index of the layer whose longest matching prefix names `module`."""
    best, best_length = -1, -1
    for number, prefixes in enumerate(LAYERS.values()):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_length:
                best, best_length = number, len(prefix)
    return best


def _is_module(name: str) -> bool:
    path = REPO.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imports(path: Path, module: str) -> list[str]:
    """Absolute names of what `path` imports (relative imports resolved)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            imported = [f"{prefix}.{alias.name}" for alias in node.names]
            names.extend(imported)
            if not all(_is_module(name) for name in imported):  # `from pkg import attribute`
                names.append(prefix)
    return names


SOURCES = sorted(p for root in ("dicomserver", "backends") for p in (REPO / root).rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_imports_follow_the_layers(path: Path) -> None:
    module = _module_name(path)
    layer = _layer_of(module)
    assert layer >= 0, f"{module} is in no layer of docs/architecture.md (tests/test_architecture.py LAYERS)"
    upward = sorted(
        {
            name
            for name in _imports(path, module)
            if name.startswith(("dicomserver", "backends")) and _layer_of(name) > layer
        }
    )
    assert not upward, f"{module} ({list(LAYERS)[layer]}) imports from a higher layer: {upward}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_only_views_import_flask(path: Path) -> None:
    module = _module_name(path)
    allowed = any(module == p or module.startswith(p + ".") for p in FLASK_ALLOWED[:-1]) or module == "dicomserver"
    web = sorted({name for name in _imports(path, module) if name.split(".")[0] in WEB_PACKAGES})
    assert allowed or not web, f"{module} imports {web}; only views, the app factory, the CLI and the WSGI entry may"


VIEW_DECORATORS = ("get", "post", "put", "delete", "route")
MAX_VIEW_LINES = 25


def _views(path: Path) -> list[tuple[str, int]]:
    """(name, lines) of the route functions of a blueprint module."""
    views = []
    for node in ast.parse(path.read_text()).body:
        if not isinstance(node, ast.FunctionDef):
            continue
        for decorator in node.decorator_list:
            call = decorator.func if isinstance(decorator, ast.Call) else decorator
            name = call.attr if isinstance(call, ast.Attribute) else getattr(call, "id", "")
            if name in VIEW_DECORATORS or name == "_routes":
                assert node.end_lineno is not None
                views.append((node.name, node.end_lineno - node.lineno + 1))
                break
    return views


@pytest.mark.parametrize(
    "path", sorted((REPO / "dicomserver" / "services").glob("*.py")), ids=lambda p: p.name
)
def test_views_are_thin(path: Path) -> None:
    """A view parses, calls one domain function and formats: a few lines, never a pipeline."""
    long = [(name, lines) for name, lines in _views(path) if lines > MAX_VIEW_LINES]
    assert not long, f"views over {MAX_VIEW_LINES} lines in {path.name}: {long}"


def test_every_service_has_views() -> None:
    """The check above sees the routes (a renamed decorator would otherwise pass it silently)."""
    found = {p.stem: _views(p) for p in (REPO / "dicomserver" / "services").glob("*.py")}
    for service in ("stow", "wado", "bulkdata", "qido", "delete", "changefeed", "rendered", "ops", "browser", "metrics", "openapi"):
        assert found[service], service


def test_the_gunicorn_worker_loads_no_metrics_in_the_master():
    """gunicorn's master imports the worker class before `on_starting` chooses the Prometheus
    multiprocess directory: prometheus_client imported by then counts for one process only
    (every worker's counts were lost once, when the worker imported retrieve.py)."""
    code = "import sys, dicomserver.gunicorn_worker; print('prometheus_client' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
