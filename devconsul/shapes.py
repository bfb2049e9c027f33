"""Consul's JSON response shapes for nodes, services, checks and KV entries (pure)."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from devconsul.catalog import CheckRecord, Node, ServiceRecord
from devconsul.durations import format_duration
from devconsul.kv import KVEntry

JSON = dict[str, Any]


def node_json(node: Node) -> JSON:
    """A catalog node (health entries' `Node`, /v1/catalog/nodes)."""
    return {
        "ID": node.node_id, "Node": node.name, "Address": node.address, "Datacenter": node.datacenter,
        "TaggedAddresses": {"lan": node.address, "lan_ipv4": node.address, "wan": node.address,
                            "wan_ipv4": node.address},
        "Meta": {"consul-network-segment": ""}, "CreateIndex": node.create_index, "ModifyIndex": node.create_index,
    }


def _weights(record: ServiceRecord) -> JSON:
    passing, warning = record.definition.weights
    return {"Passing": passing, "Warning": warning}


def agent_service_json(record: ServiceRecord, node: Node) -> JSON:
    """A service as /v1/agent/services and /v1/agent/service/:id show it."""
    d = record.definition
    body: JSON = {
        "Kind": "", "ID": d.id, "Service": d.name, "Tags": list(d.tags), "Meta": dict(d.meta), "Port": d.port,
        "Address": d.address, "TaggedAddresses": {}, "Weights": _weights(record),
        "EnableTagOverride": d.enable_tag_override, "Datacenter": node.datacenter,
    }
    body["ContentHash"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
    return body


def health_service_json(record: ServiceRecord) -> JSON:
    """A service inside a health entry."""
    d = record.definition
    return {
        "ID": d.id, "Service": d.name, "Tags": list(d.tags), "Address": d.address, "TaggedAddresses": {},
        "Meta": dict(d.meta), "Port": d.port, "Weights": _weights(record), "EnableTagOverride": d.enable_tag_override,
        "Proxy": {"Mode": "", "MeshGateway": {}, "Expose": {}}, "Connect": {}, "PeerName": "",
        "CreateIndex": record.create_index, "ModifyIndex": record.modify_index,
    }


def catalog_service_json(record: ServiceRecord, node: Node) -> JSON:
    """An entry of /v1/catalog/service/:name."""
    d = record.definition
    return {
        "ID": node.node_id, "Node": node.name, "Address": node.address, "Datacenter": node.datacenter,
        "TaggedAddresses": node_json(node)["TaggedAddresses"], "NodeMeta": {"consul-network-segment": ""},
        "ServiceKind": "", "ServiceID": d.id, "ServiceName": d.name, "ServiceTags": list(d.tags),
        "ServiceAddress": d.address, "ServiceTaggedAddresses": {}, "ServiceWeights": _weights(record),
        "ServiceMeta": dict(d.meta), "ServicePort": d.port, "ServiceSocketPath": "",
        "ServiceEnableTagOverride": d.enable_tag_override, "ServiceProxy": {"Mode": "", "MeshGateway": {},
                                                                            "Expose": {}},
        "ServiceConnect": {}, "CreateIndex": record.create_index, "ModifyIndex": record.modify_index,
    }


def check_json(check: CheckRecord, node: Node, *, with_indexes: bool = True) -> JSON:
    """A health check; the agent endpoints show indexes as 0 since they describe local state."""
    definition = check.definition
    interval = format_duration(definition.interval_ns) if definition and definition.interval_ns else ""
    timeout = format_duration(definition.timeout_ns) if definition and definition.timeout_ns else ""
    body: JSON = {
        "Node": node.name, "CheckID": check.check_id, "Name": check.name, "Status": check.status,
        "Notes": check.notes, "Output": check.output, "ServiceID": check.service_id,
        "ServiceName": check.service_name, "ServiceTags": list(check.service_tags), "Type": check.kind,
        "Interval": interval, "Timeout": timeout, "ExposedPort": 0, "Definition": _definition_json(check),
        "CreateIndex": check.create_index if with_indexes else 0,
        "ModifyIndex": check.modify_index if with_indexes else 0,
    }
    return body


def _definition_json(check: CheckRecord) -> JSON:
    d = check.definition
    if d is None:
        return {}
    return {
        "HTTP": d.http, "Header": {k: list(v) for k, v in d.header} or None, "Method": d.method, "Body": d.body,
        "TLSSkipVerify": d.tls_skip_verify, "Interval": format_duration(d.interval_ns),
        "Timeout": format_duration(d.timeout_ns), "DeregisterCriticalServiceAfter":
            format_duration(d.deregister_after_ns),
    }


def kv_json(entry: KVEntry) -> JSON:
    """A KV entry with its base64 value (null for an empty value, as Consul)."""
    return {
        "LockIndex": entry.lock_index, "Key": entry.key, "Flags": entry.flags,
        "Value": base64.b64encode(entry.value).decode("ascii") if entry.value else None,
        "CreateIndex": entry.create_index, "ModifyIndex": entry.modify_index,
    }
