"""Pure functions from one vendor's raw request to the normalised report.

Nothing here imports Flask, the database or HTTP.
"""
