import pytest

from flask_app import SyncFlask


def plain_view():
    return "plain"


async def async_view():
    return "async"


def test_a_plain_function_is_called_as_it_is():
    app = SyncFlask(__name__)
    assert app.ensure_sync(plain_view) is plain_view
    assert app.ensure_sync(plain_view) is plain_view


def test_an_async_function_still_goes_through_flasks_async_support():
    app = SyncFlask(__name__)
    # Without Flask's "async" extra (asgiref), Flask itself refuses async views the same way.
    with pytest.raises(RuntimeError, match="async"):
        app.ensure_sync(async_view)


def test_views_and_hooks_run_through_the_subclass():
    app = SyncFlask(__name__)
    calls = []
    app.before_request(lambda: calls.append("before"))
    app.add_url_rule("/", view_func=plain_view)
    response = app.test_client().get("/")
    assert (response.get_data(as_text=True), calls) == ("plain", ["before"])
