"""The application factory: configuration, extensions, blueprints, error handlers, logging, CLI."""
from __future__ import annotations

import cli
import logging_setup
from config import load_config
from errors import register_error_handlers
from extensions import load_vendor_registry, migrate, secret_box_factory, token_verifier_from_config
from flask_app import SyncFlask
from models import db
from routes import dashboard, ops, partner, sap, vendors
from services.metrics import init_metrics
from services.vendors.transport import allow_private_addresses


def create_app(config: dict | None = None) -> SyncFlask:
    """Create and configure one instance of the service."""
    app = SyncFlask(__name__, instance_relative_config=True)
    app.config.update(load_config())
    app.config.update(config or {})
    db.init_app(app)
    migrate.init_app(app, db, directory=str(cli.MIGRATIONS_DIR))
    app.extensions["vendor_registry"] = load_vendor_registry(app.config["VENDOR_MAPPINGS_FILE"])
    app.extensions["secret_box"] = secret_box_factory(app)
    app.extensions["emarsys_token_verifier"] = token_verifier_from_config(app.config)
    allow_private_addresses(app.config["VENDOR_ALLOW_PRIVATE_ADDRESSES"])
    for blueprint in (vendors.bp, sap.bp, ops.bp, partner.bp, dashboard.bp):
        app.register_blueprint(blueprint)
    register_error_handlers(app)
    init_metrics(app)
    logging_setup.configure(app)
    cli.register(app)
    return app
