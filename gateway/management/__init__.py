"""The management API (its own port): key lifecycle, authorized against ``api-keys``."""

from .api import build_management_app

__all__ = ["build_management_app"]
