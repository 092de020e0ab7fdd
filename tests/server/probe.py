"""A test-only Jupyter Server extension: ``GET /ipyllm-test/modules`` lists the modules the server process has
imported, so a test can see that serving ipyllm's endpoints never imported litellm."""

from __future__ import annotations

import sys
from typing import Any

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web


class ModulesHandler(APIHandler):
    @web.authenticated
    def get(self) -> None:
        self.finish({"modules": sorted(sys.modules)})


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    return [{"module": "tests.server.probe"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    base = serverapp.web_app.settings["base_url"]
    serverapp.web_app.add_handlers(".*$", [(url_path_join(base, "ipyllm-test", "modules"), ModulesHandler)])
