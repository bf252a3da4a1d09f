"""The piccolo app: its tables and the top-level migrations folder."""

from piccolo.conf.apps import AppConfig

from service.config import PROJECT_ROOT
from service.db.tables import TABLES

APP_CONFIG = AppConfig(
    app_name="loyalty",
    migrations_folder_path=PROJECT_ROOT / "migrations",
    table_classes=list(TABLES),
)
