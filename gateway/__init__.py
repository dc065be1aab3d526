"""keygate: an authorization gateway for API keys."""

__version__ = "0.1.0"
