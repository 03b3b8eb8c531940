"""Logging set-up and the warnings an operator must see at start-up."""
from __future__ import annotations

import logging
import sys

from flask import Flask


def configure(app: Flask) -> None:
    """Send logs to stdout and warn loudly about unsafe production settings."""
    if not app.logger.handlers or app.config.get("PRODUCTION"):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        app.logger.handlers = [handler]
        app.logger.setLevel(logging.INFO)
    warn_about_open_endpoints(app)


def warn_about_open_endpoints(app: Flask) -> None:
    """Log a loud warning when production runs the SAP pull without credentials."""
    creds = app.config.get("SAP_STATUS_USERNAME") and app.config.get("SAP_STATUS_PASSWORD")
    if app.config.get("PRODUCTION") and not creds:
        app.logger.warning(
            "SECURITY WARNING: SAP_STATUS_USERNAME/SAP_STATUS_PASSWORD are not set; "
            "GET /status serves bounces to anyone. Set them to the SAP communication user's credentials.")
