"""Alembic environment: migrations run on a connection handed in by osp_server.storage.db."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from osp_server.storage.schema import metadata

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError("osp-server migrations run through `osp-admin db upgrade` or at start-up")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
    # Progress of `osp-admin db upgrade` (osp_server.storage.db.upgrade_schema).
    on_version_apply=context.config.attributes.get("on_version_apply", ()),
)
with context.begin_transaction():
    context.run_migrations()
