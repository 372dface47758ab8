"""The HTTP bridge: legacy callers POST an envelope and get the worker's reply, over the broker.

``create_app(settings, client)`` builds the ASGI application (``bridge_client`` gives the client it needs:
None over plain AMQP); ``server.Server`` runs it under uvicorn.
"""

from kvmworker.bridge.app import create_app

__all__ = ["create_app"]
