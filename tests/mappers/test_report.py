"""The SAP bounce type each normalised outcome implies."""
from __future__ import annotations

import pytest

from mappers.report import Outcome, bounce_type_for

BOUNCE_TYPES = [
    (Outcome.HARDBOUNCE, "Permanent"),
    (Outcome.SOFTBOUNCE, "Temporary"),
    # Not the recipient's fault: never marks the number permanently bad.
    (Outcome.ERROR, "Temporary"),
    (Outcome.DELIVERED, None),
    (Outcome.ACCEPTED, None),
    (Outcome.UNKNOWN, None),
]


@pytest.mark.parametrize("outcome, bounce_type", BOUNCE_TYPES)
def test_each_outcome_implies_its_sap_bounce_type(outcome, bounce_type):
    assert bounce_type_for(outcome) == bounce_type


def test_the_table_names_every_outcome():
    assert {outcome for outcome, _ in BOUNCE_TYPES} == set(Outcome)
