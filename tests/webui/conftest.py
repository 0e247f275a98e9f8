"""The webui stand-in's fixtures (harness.py) for the adapter's tests."""

from .harness import shared_cache, webui  # noqa: F401
