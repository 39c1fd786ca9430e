"""Chat server: aiohttp application, settings, CLI and HTTP routes."""
