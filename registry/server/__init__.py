"""The built-in Hub-compatible server: an ASGI app over the registry database and a blob store.

``create_app(config)`` builds the app; ``loradex serve`` runs it under uvicorn.
"""

from registry.server.app import ServerConfig, create_app

__all__ = ["ServerConfig", "create_app"]
