"""Persistence: piccolo app, tables, queries and transactions."""

import os

os.environ.setdefault("PICCOLO_CONF", "service.db.piccolo_conf")
