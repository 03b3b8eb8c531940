"""A bounce's seq has no default: every version names the raw event that wrote it

Revision 0003 gave the column a server default of 0 so that existing rows could be filled. A
version stored with seq 0 would fall inside every pull sequence's snapshot, so a write that forgot
it must fail instead.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01

"""
from alembic import op


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('bounces') as batch_op:
        batch_op.alter_column('seq', server_default=None)


def downgrade():
    with op.batch_alter_table('bounces') as batch_op:
        batch_op.alter_column('seq', server_default='0')
