"""Every proxy test runs against each HTTP lane: the native one (gateway._http, `wsgate.native-http`) and Python's."""

from __future__ import annotations

import pytest

from gateway.proxy import native_http

HTTP_LANES = ("native", "python")


@pytest.fixture(autouse=True, params=HTTP_LANES)
def http_lane(request: pytest.FixtureRequest) -> str:
    """The lane of this test's gateways (a missing native build fails the native runs rather than skip them)."""
    if request.param == "native" and not native_http.available():
        pytest.fail("gateway._http is not built (pip install -e . needs a C compiler)")
    return str(request.param)
