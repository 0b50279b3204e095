"""a data migration: capitalised titles

Revision ID: app0002
Revises: app0001
Create Date: 2026-12-02
"""

from alembic import op

revision = "app0002"
down_revision = "app0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("UPDATE recipe SET title = UPPER(title)")


def downgrade() -> None:
    op.execute("UPDATE recipe SET title = LOWER(title)")
