"""The pure catalog: index, change topics, filters, TTL expiry, maintenance and reaping with time passed in."""

from __future__ import annotations

import pytest

from devconsul.catalog import (
    MAINTENANCE_PREFIX,
    SERF_CHECK_ID,
    TOPIC_CHECKS,
    TOPIC_SERVICES,
    Catalog,
    IndexClock,
    Node,
    service_topic,
)
from devconsul.definitions import CheckDefinition, ServiceDefinition
from devconsul.errors import DevConsulError, NotFound

S = 1_000_000_000


def make_catalog() -> Catalog:
    return Catalog(Node(name="n1", node_id="id-1"), IndexClock())


def ttl_service(sid: str, *, name: str = "web", tags: tuple[str, ...] = (), status: str = "",
                ttl_s: int = 10, deregister_s: int = 0) -> ServiceDefinition:
    check = CheckDefinition(ttl_ns=ttl_s * S, status=status, deregister_after_ns=deregister_s * S)
    return ServiceDefinition(name=name, service_id=sid, tags=tags, checks=(check,))


def test_catalog_register_advances_index_and_names_topics() -> None:
    catalog = make_catalog()
    before = catalog.clock.value
    changes = catalog.register_service(ttl_service("w1"), replace_existing_checks=False, now_s=0)
    assert catalog.clock.value == before + 1
    assert changes.topics == {TOPIC_SERVICES, TOPIC_CHECKS, service_topic("web")}
    assert catalog.service_index("web") == catalog.clock.value


def test_catalog_new_check_is_critical_with_consul_ids_and_names() -> None:
    catalog = make_catalog()
    catalog.register_service(ttl_service("w1"), replace_existing_checks=False, now_s=0)
    two = ServiceDefinition(name="api", service_id="a1", checks=(CheckDefinition(ttl_ns=S), CheckDefinition(ttl_ns=S)))
    catalog.register_service(two, replace_existing_checks=False, now_s=0)
    assert {c.check_id: (c.name, c.status) for c in catalog.local_checks()} == {
        "service:w1": ("Service 'web' check", "critical"),
        "service:a1:1": ("Service 'api' check", "critical"),
        "service:a1:2": ("Service 'api' check", "critical"),
    }


def test_catalog_health_includes_serf_health_and_passing_needs_every_check() -> None:
    catalog = make_catalog()
    catalog.register_service(ttl_service("w1", status="passing"), replace_existing_checks=False, now_s=0)
    catalog.register_service(ttl_service("w2"), replace_existing_checks=False, now_s=0)
    assert [[c.check_id for c in checks] for _, checks in catalog.health("web")] == [
        ["service:w1", SERF_CHECK_ID], ["service:w2", SERF_CHECK_ID]]
    assert [s.definition.id for s, _ in catalog.health("web", passing_only=True)] == ["w1"]


@pytest.mark.parametrize(("tags", "expected"), [
    ((), ["w1", "w2", "w3"]), (("primary",), ["w1", "w3"]), (("PRIMARY", "v2"), ["w3"]), (("none",), []),
])
def test_catalog_tag_filter_requires_every_tag_case_insensitively(tags: tuple[str, ...], expected: list[str]) -> None:
    catalog = make_catalog()
    for sid, service_tags in (("w1", ("primary",)), ("w2", ("v2",)), ("w3", ("primary", "v2"))):
        catalog.register_service(ttl_service(sid, tags=service_tags), replace_existing_checks=False, now_s=0)
    assert [s.definition.id for s in catalog.instances("web", tags)] == expected


def test_catalog_ttl_expires_at_deadline_and_restarts_on_update() -> None:
    catalog = make_catalog()
    catalog.register_service(ttl_service("w1", ttl_s=2), replace_existing_checks=False, now_s=0)
    catalog.update_ttl("service:w1", "passing", "ok", now_s=1.0)
    assert catalog.next_deadline_s() == 3.0
    assert not catalog.tick(2.9)
    changes = catalog.tick(3.0)
    assert service_topic("web") in changes.topics
    check = catalog.check("service:w1")
    assert check is not None
    assert (check.status, check.output) == ("critical", "TTL expired (last output before timeout follows): ok")


def test_catalog_same_status_update_does_not_advance_index() -> None:
    catalog = make_catalog()
    catalog.register_service(ttl_service("w1"), replace_existing_checks=False, now_s=0)
    catalog.update_ttl("service:w1", "passing", "a", now_s=0)
    index = catalog.clock.value
    assert not catalog.update_ttl("service:w1", "passing", "b", now_s=0)
    assert catalog.clock.value == index


def test_catalog_reaps_service_critical_longer_than_deregister_after() -> None:
    catalog = make_catalog()
    catalog.register_service(ttl_service("w1", ttl_s=100, deregister_s=5), replace_existing_checks=False, now_s=10)
    assert catalog.next_deadline_s() == 15
    assert not catalog.tick(14.9)
    assert TOPIC_SERVICES in catalog.tick(15).topics
    assert catalog.service("w1") is None and catalog.local_checks() == []


def test_catalog_passing_check_is_not_reaped() -> None:
    catalog = make_catalog()
    catalog.register_service(ttl_service("w1", ttl_s=100, deregister_s=5, status="passing"),
                             replace_existing_checks=False, now_s=0)
    catalog.tick(50)
    assert catalog.service("w1") is not None


def test_catalog_maintenance_adds_and_removes_critical_check() -> None:
    catalog = make_catalog()
    catalog.register_service(ttl_service("w1", status="passing"), replace_existing_checks=False, now_s=0)
    assert catalog.set_maintenance("w1", enable=True, reason="upgrade", now_s=0)
    assert not catalog.set_maintenance("w1", enable=True, reason="again", now_s=0)
    check = catalog.check(MAINTENANCE_PREFIX + "w1")
    assert check is not None and (check.status, check.notes) == ("critical", "upgrade")
    assert catalog.health("web", passing_only=True) == []
    catalog.set_maintenance("w1", enable=False, reason="", now_s=0)
    assert [s.definition.id for s, _ in catalog.health("web", passing_only=True)] == ["w1"]


def test_catalog_reregistration_keeps_check_status_and_replace_drops_missing_checks() -> None:
    catalog = make_catalog()
    two = ServiceDefinition(name="web", service_id="w1", checks=(CheckDefinition(ttl_ns=S), CheckDefinition(ttl_ns=S)))
    catalog.register_service(two, replace_existing_checks=False, now_s=0)
    catalog.update_ttl("service:w1:1", "passing", "", now_s=0)
    catalog.register_service(two, replace_existing_checks=False, now_s=0)
    check = catalog.check("service:w1:1")
    assert check is not None and check.status == "passing"
    catalog.register_service(ttl_service("w1"), replace_existing_checks=True, now_s=0)
    assert [c.check_id for c in catalog.local_checks()] == ["service:w1"]


def test_catalog_errors_for_unknown_ids_and_non_ttl_updates() -> None:
    catalog = make_catalog()
    with pytest.raises(NotFound):
        catalog.deregister_service("nope")
    with pytest.raises(NotFound):
        catalog.update_ttl("nope", "passing", "", now_s=0)
    with pytest.raises(NotFound):
        catalog.set_maintenance("nope", enable=True, reason="", now_s=0)
    http = ServiceDefinition(name="h", checks=(CheckDefinition(http="http://127.0.0.1:1/", interval_ns=S),))
    catalog.register_service(http, replace_existing_checks=False, now_s=0)
    with pytest.raises(DevConsulError, match="does not have associated TTL"):
        catalog.update_ttl("service:h", "passing", "", now_s=0)


def test_catalog_stale_http_result_is_ignored_after_redefinition() -> None:
    catalog = make_catalog()
    old = CheckDefinition(http="http://127.0.0.1:1/a", interval_ns=S)
    catalog.register_service(ServiceDefinition(name="h", checks=(old,)), replace_existing_checks=False, now_s=0)
    new = CheckDefinition(http="http://127.0.0.1:1/b", interval_ns=S)
    catalog.register_service(ServiceDefinition(name="h", checks=(new,)), replace_existing_checks=False, now_s=0)
    assert not catalog.record_http_result("service:h", old, "passing", "x", now_s=0)
    assert catalog.record_http_result("service:h", new, "passing", "x", now_s=0)


def test_catalog_services_lists_tag_union_including_consul() -> None:
    catalog = make_catalog()
    catalog.register_service(ttl_service("w1", tags=("b",)), replace_existing_checks=False, now_s=0)
    catalog.register_service(ttl_service("w2", tags=("a", "b")), replace_existing_checks=False, now_s=0)
    assert catalog.service_tags() == {"consul": [], "web": ["a", "b"]}
    assert [s.definition.id for s in catalog.local_services()] == ["w1", "w2"]
