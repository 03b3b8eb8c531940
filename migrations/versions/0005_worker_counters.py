"""worker counters: Emarsys call results and token refreshes, persisted for /metrics

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23

"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('worker_counters',
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('labels', sa.String(length=400), nullable=False),
    sa.Column('value', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('name', 'labels', name=op.f('pk_worker_counters'))
    )


def downgrade():
    op.drop_table('worker_counters')
