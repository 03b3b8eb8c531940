"""A remembered page position names the page size it was found with

Positions are keyed by page number. Found at one STATUS_PAGE_SIZE and used at another (a redeploy
with a new size, or two instances that differ), a skipped-to page would start in the wrong place
and leave records out. Rows from before this revision have no size and are never used again; the
purge removes them within a day.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01

"""
import sqlalchemy as sa
from alembic import op


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('status_cursors') as batch_op:
        batch_op.add_column(sa.Column('page_size', sa.Integer(), nullable=True))


def downgrade():
    with op.batch_alter_table('status_cursors') as batch_op:
        batch_op.drop_column('page_size')
