"""stable SAP paging: bounce versions and remembered page starts

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22

"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('bounces', schema=None) as batch_op:
        batch_op.add_column(sa.Column('seq', sa.BigInteger(), nullable=False, server_default='0'))
    op.create_table('status_cursors',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('window_start', sa.DateTime(), nullable=False),
    sa.Column('window_end', sa.DateTime(), nullable=False),
    sa.Column('source_system', sa.String(length=100), nullable=False),
    sa.Column('page', sa.Integer(), nullable=False),
    sa.Column('snapshot_seq', sa.BigInteger(), nullable=False),
    sa.Column('after_event_at', sa.DateTime(), nullable=True),
    sa.Column('after_message_id', sa.String(length=100), nullable=True),
    sa.Column('after_id', sa.BigInteger(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_status_cursors')),
    sa.UniqueConstraint('window_start', 'window_end', 'source_system', 'page',
                        name=op.f('uq_status_cursors_window_start'))
    )
    with op.batch_alter_table('status_cursors', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_status_cursors_created_at'), ['created_at'], unique=False)


def downgrade():
    with op.batch_alter_table('status_cursors', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_status_cursors_created_at'))
    op.drop_table('status_cursors')
    with op.batch_alter_table('bounces', schema=None) as batch_op:
        batch_op.drop_column('seq')
