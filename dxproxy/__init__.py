"""DX: the front door for LLM engines. HTTP server, APIs, auth, routing, config, CLI."""

__version__ = "0.1.0"
# What GET /api/version reports: the Ollama API level DX implements. Clients parse it as
# plain X.Y.Z integers (Open WebUI fails on anything else) and gate features on it.
OLLAMA_API_VERSION = "0.13.0"
