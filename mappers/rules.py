"""Status-rule lookup and parameter reading shared by the vendor mappers.

A vendor's built-in table and the operator's overrides map status keys to an outcome, or to
an outcome with an error type. Override keys are matched ignoring surrounding space and
letter case; an override replaces the built-in entry with the same key.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from mappers.params import optional, phone_number, required
from mappers.report import MAX_MESSAGE_ID_LENGTH, ErrorType, MappingError, Outcome, check_lengths

OutcomeRule = tuple[Outcome, ErrorType | None]
Overrides = Mapping[str, "Outcome | OutcomeRule"]


def as_rule(value: Outcome | OutcomeRule) -> OutcomeRule:
    """Return a table value as a rule that carries an error type only for ERROR."""
    outcome, error_type = value if isinstance(value, tuple) else (value, None)
    if outcome is Outcome.ERROR and error_type is None:
        return outcome, ErrorType.UNKNOWN
    return outcome, error_type if outcome is Outcome.ERROR else None


def coded_status_keys(status: str, code: str) -> list[str]:
    """Return the keys for a status and its code, most specific first."""
    keys = [f"{status}:{code}", f"*:{code}"] if code else []
    keys.append(status)
    return keys


def find_rule(keys: Iterable[str], built_in: Mapping[str, OutcomeRule],
              overrides: Overrides | None) -> OutcomeRule | None:
    """Return the rule of the first key listed, preferring an override, or None."""
    operator_rules = {key.strip().lower(): value for key, value in (overrides or {}).items()}
    for key in keys:
        for table in (operator_rules, built_in):
            if key in table:
                return as_rule(table[key])
    return None


def required_as_spelled(fields: Mapping[str, str], name: str) -> str:
    """Return a required parameter from lower-cased fields, naming it as spelled on error."""
    try:
        return required(fields, name.lower())
    except MappingError as error:
        raise MappingError(name, error.fault) from None


def message_id_from(fields: Mapping[str, str], *names: str) -> str:
    """Return the message id from the first of the parameters sent (lower-cased fields), naming it in a fault."""
    for name in names:
        value = optional(fields, name.lower())
        if value:
            check_lengths({name: (value, MAX_MESSAGE_ID_LENGTH)})
            return value
    return required_as_spelled(fields, names[0])


def required_phone_number(fields: Mapping[str, str], name: str) -> str:
    """Return a required phone number from lower-cased fields (see params.phone_number), naming it as spelled."""
    required_as_spelled(fields, name)
    return phone_number(fields[name.lower()])
