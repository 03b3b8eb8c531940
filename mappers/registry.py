"""Every vendor the service understands: built-in mappers plus those a mapping file declares."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from mappers import configurable, expertflow, genesys, sapdi, twilio
from mappers.params import TEXT_PARAMETERS
from mappers.report import DeliveryReport, InboundMessage, MappingError

Params = Mapping[str, str]
BUILT_IN = {module.VENDOR: module for module in (sapdi, genesys, twilio, expertflow)}


@dataclass(frozen=True)
class VendorAdapter:
    """How to read one vendor's delivery reports and inbound messages."""

    name: str
    map_report: Callable[[Params, datetime], DeliveryReport]
    map_inbound: Callable[[Params, datetime], InboundMessage]
    is_recognised: Callable[[Params], bool]
    # Lower-cased names of the parameters that carry a message text (what a 16-bit charset applies
    # to, what the dashboard hides), and of those that carry a phone number beyond the usual ones.
    body_parameters: frozenset[str] = TEXT_PARAMETERS
    phone_parameters: frozenset[str] = frozenset()


def build_registry(mapping_file: configurable.MappingFile | None = None) -> dict[str, VendorAdapter]:
    """Return the adapters by vendor name, with the file's overrides applied to built-in tables."""
    overrides = mapping_file.overrides if mapping_file else {}
    registry = {name: _built_in(name, module, overrides.get(name)) for name, module in BUILT_IN.items()}
    for name, mapping in (mapping_file.vendors if mapping_file else {}).items():
        registry[name] = VendorAdapter(
            name=name,
            map_report=_naming_faults(partial(configurable.map_delivery_report, mapping),
                                      configurable.report_parameters(mapping)),
            map_inbound=_naming_faults(partial(configurable.map_inbound_message, mapping),
                                       configurable.inbound_parameters(mapping)),
            is_recognised=partial(configurable.is_recognised, mapping),
            body_parameters=TEXT_PARAMETERS | mapping.body_parameters,
            phone_parameters=mapping.phone_parameters,
        )
    return registry


def _built_in(name: str, module, overrides) -> VendorAdapter:
    inbound = getattr(module, "map_inbound_message", None) or partial(_no_inbound, name)
    recognised = getattr(module, "is_recognised", None)
    return VendorAdapter(
        name=name,
        map_report=_naming_faults(partial(module.map_delivery_report, overrides=overrides),
                                  module.REPORT_PARAMETERS),
        map_inbound=_naming_faults(inbound, getattr(module, "INBOUND_PARAMETERS", {})),
        is_recognised=partial(recognised, overrides=overrides) if recognised else (lambda params: True),
    )


def _naming_faults(mapper: Callable[[Params, datetime], Any], parameter_names: Mapping[str, str]):
    """Return the mapper, with a fault of a normalised field named as the vendor's parameter.

    A normalised field checks its own length, and the vendor should read `phone_number`, not `source`.
    """
    def mapped(params: Params, received_at: datetime) -> Any:
        try:
            return mapper(params, received_at)
        except MappingError as error:
            raise error.renamed(parameter_names) from None
    return mapped


def _no_inbound(vendor: str, params: Params, received_at: datetime) -> InboundMessage:
    raise MappingError("vendor", f"{vendor} sends no inbound messages")
