"""Table tests of the Consul registration's pure parts: agent addresses and the check definition."""

from __future__ import annotations

import pytest

from wsnode.registration import ConsulTarget, ServiceSpec, parse_consul_addr


@pytest.mark.parametrize(("addr", "target"), [
    ("127.0.0.1:8500", ConsulTarget("127.0.0.1", 8500)),
    ("http://consul:8501", ConsulTarget("consul", 8501)),
    ("https://consul.example", ConsulTarget("consul.example", 443, "https")),
    ("localhost", ConsulTarget("localhost", 8500)),
    ("[::1]:8500", ConsulTarget("::1", 8500)),
])
def test_parse_consul_addr(addr: str, target: ConsulTarget) -> None:
    assert parse_consul_addr(addr) == target


@pytest.mark.parametrize("addr", ["ftp://x", "http://", ""])
def test_parse_consul_addr_refuses(addr: str) -> None:
    with pytest.raises(ValueError):
        parse_consul_addr(addr)


@pytest.mark.parametrize(("interval_s", "deregister_s", "interval", "timeout", "deregister"), [
    (1.0, 60.0, "1s", "1s", "60s"),
    (0.5, 30.0, "500ms", "500ms", "30s"),
    (10.0, 90.0, "10s", "1s", "90s"),
])
def test_check_is_an_http_check_on_health(interval_s: float, deregister_s: float, interval: str, timeout: str,
                                          deregister: str) -> None:
    spec = ServiceSpec(name="ws-service", service_id="ws-service-n1", address="10.0.0.5", port=8080, node_id="n1",
                       tags=(), check_interval_s=interval_s, deregister_after_s=deregister_s)
    assert spec.check() == {"HTTP": "http://10.0.0.5:8080/health", "Interval": interval, "Timeout": timeout,
                            "DeregisterCriticalServiceAfter": deregister}
