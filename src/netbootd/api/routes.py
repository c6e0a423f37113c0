"""The operator's routes, in the order the HTTP server matches them (before its files)."""

from __future__ import annotations

from aiohttp import web

from netbootd.api import rest
from netbootd.api.metrics import metrics_routes
from netbootd.api.view import OperatorView
from netbootd.api.web import web_routes

# The names at the top of the boot root that the operator's view takes (with "/" itself): a
# boot file there is not served over HTTP.
TAKEN_NAMES = ("api", "ui", "metrics")


def routes(view: OperatorView) -> list[web.AbstractRouteDef]:
    """Every route of the operator's view over ``view``."""
    # The page's routes first: the API's answer for any other path under /api/v1 (its
    # catch-all, last) would take the event stream's.
    return [*web_routes(view), *metrics_routes(view), *rest.routes(view), *rest.fallback()]
