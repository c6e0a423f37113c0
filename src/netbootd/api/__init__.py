"""The operator's view: the REST API, the Prometheus metrics and the web page, over HTTP.

Built over the services and the stores (:class:`~netbootd.api.view.OperatorView`), never over
the transport: the composition root hands the routes made here to the HTTP server.
"""
