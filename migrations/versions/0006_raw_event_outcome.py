"""raw events remember the outcome they were mapped to (reports per hour by outcome)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22

"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('raw_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('outcome', sa.String(length=12), nullable=True))


def downgrade():
    with op.batch_alter_table('raw_events', schema=None) as batch_op:
        batch_op.drop_column('outcome')
