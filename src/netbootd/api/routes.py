"""The operator's routes, in the order the HTTP server matches them (before its files)."""

from __future__ import annotations

from aiohttp import web

from netbootd.api import rest
from netbootd.api.metrics import metrics_routes
from netbootd.api.view import OperatorView
from netbootd.api.web import web_routes


def routes(view: OperatorView) -> list[web.AbstractRouteDef]:
    """Every route of the operator's view over ``view``."""
    # The page's routes first: the API's answer for any other path under /api/v1 (its
    # catch-all, last) would take the event stream's.
    return [*web_routes(view), *metrics_routes(view), *rest.routes(view), *rest.fallback()]
