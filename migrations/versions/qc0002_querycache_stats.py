"""querycache: app-wide counters and the app-wide switch of the "sql" version store

Revision ID: qc0002
Revises: qc0001
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "qc0002"
down_revision = "qc0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "querycache_stats",
        sa.Column("namespace", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(1), primary_key=True),
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("value", sa.Float(53), nullable=False),
        sa.Column("info", sa.Text, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("querycache_stats")
