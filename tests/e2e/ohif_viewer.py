"""OHIF's prebuilt viewer, configured for one dicomserver and served on a loopback port.

e2e/fetch-ohif.mjs unpacks the pinned `@ohif/app` tarball into e2e/.cache; this module
serves a copy of its `dist/` whose `app-config.js` names a single DICOMweb data source: the
dicomserver under test. The copy is made of hard links (the unpacked tree is never written
to), and every path that is not a file gets `index.html`, as OHIF's single-page routes
(`/viewer?StudyInstanceUIDs=…`) need.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import threading
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

REPO = Path(__file__).resolve().parents[2]
E2E = REPO / "e2e"


def ohif_version() -> str:
    return json.loads((E2E / "package.json").read_text())["config"]["ohifApp"]


def ohif_dist() -> Path:
    """The unpacked dist/ (`make e2e` fetches it first)."""
    dist = E2E / ".cache" / f"ohif-app-{ohif_version()}" / "dist"
    if not (dist / "index.html").is_file():
        raise RuntimeError(f"{dist} is missing: run `make e2e` (or `node e2e/fetch-ohif.mjs`)")
    return dist


def app_config(dicomweb_root: str) -> dict:
    """OHIF's `window.config` with one data source, the dicomserver at `dicomweb_root`
    (…/v2). WADO-RS for images (dicomserver serves no WADO-URI), the server's own
    /thumbnail for the study browser, upload through STOW-RS."""
    return {
        "routerBasename": "/",
        "showStudyList": True,
        "extensions": [],
        "modes": [],
        # No onboarding tour over the first viewer (it would cover part of each screenshot).
        "customizationService": {"ohif.tours": {"$set": []}},
        "maxNumberOfWebWorkers": 2,
        # Served without COOP/COEP headers: no SharedArrayBuffer, and no warning about it.
        "useSharedArrayBuffer": "FALSE",
        "showWarningMessageForCrossOrigin": False,
        "showLoadingIndicator": True,
        "investigationalUseDialog": {"option": "never"},
        "defaultDataSourceName": "dicomserver",
        "dataSources": [
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": "dicomserver",
                "configuration": {
                    "friendlyName": "dicomserver",
                    "name": "dicomserver",
                    "qidoRoot": dicomweb_root,
                    "wadoRoot": dicomweb_root,
                    "wadoUriRoot": dicomweb_root,
                    "qidoSupportsIncludeField": True,
                    "supportsFuzzyMatching": False,
                    "supportsWildcard": True,
                    "imageRendering": "wadors",
                    "thumbnailRendering": "thumbnail",
                    "thumbnailRequestStrategy": "fetch",
                    "enableStudyLazyLoad": True,
                    "bulkDataURI": {"enabled": True},
                    "omitQuotationForMultipartRequest": True,
                    "dicomUploadEnabled": True,
                },
            }
        ],
    }


def configured_copy(target: Path, config: dict) -> Path:
    """A hard-linked copy of the dist with `config` as its app-config.js."""
    shutil.copytree(ohif_dist(), target, copy_function=os.link)
    app_config_js = target / "app-config.js"
    app_config_js.unlink()  # a link to the unpacked file: replace it, never write through it
    app_config_js.write_text(f"window.config = {json.dumps(config, indent=2)};\n")
    return target


class _SinglePageHandler(SimpleHTTPRequestHandler):
    extensions_map: ClassVar[dict[str, str]] = {
        **SimpleHTTPRequestHandler.extensions_map,
        ".js": "text/javascript",
        ".mjs": "text/javascript",
        ".wasm": "application/wasm",
        ".json": "application/json",
    }

    def send_head(self):
        """Any path that is not a file is one of OHIF's routes: index.html (its router reads the URL)."""
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.path = "/index.html"
        return super().send_head()

    def log_message(self, format: str, *args) -> None:
        """Quiet: the browser checks report failed requests themselves."""


@dataclass
class StaticServer:
    url: str
    server: ThreadingHTTPServer
    thread: threading.Thread

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def serve(directory: Path, port: int) -> StaticServer:
    """`directory` at http://127.0.0.1:`port`/, in a thread of this process."""
    handler = functools.partial(_SinglePageHandler, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name=f"static:{port}", daemon=True)
    thread.start()
    return StaticServer(f"http://127.0.0.1:{port}", server, thread)
