"""The operator's routes, in the order the HTTP server matches them (before its files)."""

from __future__ import annotations

from aiohttp import web

from netbootd.api import rest
from netbootd.api.metrics import metrics_routes
from netbootd.api.view import OperatorView


def routes(view: OperatorView) -> list[web.AbstractRouteDef]:
    """Every route of the operator's view over ``view``."""
    # The API's catch-all answers for every path under /api/v1 it reaches: it comes last, after
    # the API's routes and any other module's under /api/v1.
    return [*metrics_routes(view), *rest.routes(view), *rest.fallback()]
