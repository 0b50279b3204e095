"""querycache: the table of the "sql" version store

Revision ID: qc0001
Revises:
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "qc0001"
down_revision = None
branch_labels = ("querycache",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "querycache_versions",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("querycache_versions")
