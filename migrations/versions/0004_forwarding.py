"""outbox forwarding: first attempt time, index of open items per client

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22

"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

OPEN_ITEMS = "state IN ('pending', 'leased')"


def upgrade():
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.add_column(sa.Column('first_attempt_at', sa.DateTime(), nullable=True))
        batch_op.create_index('ix_outbox_open', ['client_id', 'kind', 'event_at', 'id'], unique=False,
                              postgresql_where=sa.text(OPEN_ITEMS), sqlite_where=sa.text(OPEN_ITEMS))


def downgrade():
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_open')
        batch_op.drop_column('first_attempt_at')
