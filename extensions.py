"""Flask extensions, created unbound and initialised by the factory."""
from __future__ import annotations

from flask_migrate import Migrate

migrate = Migrate()
