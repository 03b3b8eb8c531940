"""The service's Flask class."""
from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from flask import Flask
from flask.json.provider import DefaultJSONProvider

# Views, hooks and error handlers live as long as the app, so a bounded cache holds them all.
is_coroutine_function = lru_cache(maxsize=4096)(inspect.iscoroutinefunction)


class JsonProvider(DefaultJSONProvider):
    """Flask's JSON, reading a too deeply nested body as invalid JSON rather than crashing."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        """Parse JSON; nesting deeper than Python's recursion limit is a ValueError like any bad JSON."""
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            # A 2 KB body of brackets would otherwise be a 500, which Emarsys retries forever.
            raise ValueError("JSON is nested too deeply") from None


class SyncFlask(Flask):
    """Flask that asks once per function, not once per call, whether a view or hook is async.

    Flask checks before every call of every view, hook and error handler: eight times for one
    vendor receipt, about 6 µs of its 160 µs of Python (measured 2026-12-01, see
    docs/performance.md). Flask's documentation names `ensure_sync` as the method to override
    to change how views are run.
    """

    json_provider_class = JsonProvider

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        """Return a plain function as it is, and an async one wrapped to run synchronously."""
        return self.async_to_sync(func) if is_coroutine_function(func) else func
