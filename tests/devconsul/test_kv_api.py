"""Conformance of /v1/kv through py-consul: values, flags, check-and-set, listing, deletion, blocking reads."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest


@pytest.fixture
async def prefix(consul_client: Any) -> AsyncIterator[str]:
    """A key prefix of this test's own, deleted afterwards."""
    value = f"devconsul-test/{uuid.uuid4().hex[:10]}/"
    yield value
    await consul_client.kv.delete(value, recurse=True)


async def test_kv_put_get_roundtrip_with_flags(consul_client: Any, prefix: str) -> None:
    assert await consul_client.kv.put(f"{prefix}a", "hello", flags=42) is True
    index, entry = await consul_client.kv.get(f"{prefix}a")
    assert (entry["Key"], entry["Value"], entry["Flags"]) == (f"{prefix}a", b"hello", 42)
    assert int(index) == entry["ModifyIndex"] and entry["CreateIndex"] <= entry["ModifyIndex"]
    assert (await consul_client.kv.get(f"{prefix}missing"))[1] is None


async def test_kv_check_and_set(consul_client: Any, prefix: str) -> None:
    key = f"{prefix}cas"
    assert await consul_client.kv.put(key, "1", cas=0) is True
    assert await consul_client.kv.put(key, "2", cas=0) is False
    _, entry = await consul_client.kv.get(key)
    assert await consul_client.kv.put(key, "3", cas=entry["ModifyIndex"]) is True
    assert await consul_client.kv.put(key, "4", cas=entry["ModifyIndex"]) is False
    assert (await consul_client.kv.get(key))[1]["Value"] == b"3"


async def test_kv_recurse_keys_and_delete(consul_client: Any, prefix: str) -> None:
    for key in ("x/1", "x/2", "y"):
        await consul_client.kv.put(prefix + key, key)
    _, entries = await consul_client.kv.get(prefix, recurse=True)
    assert [e["Key"].removeprefix(prefix) for e in entries] == ["x/1", "x/2", "y"]
    _, keys = await consul_client.kv.get(prefix, keys=True, separator="/")
    assert keys == [f"{prefix}x/", f"{prefix}y"]
    assert await consul_client.kv.delete(f"{prefix}x/", recurse=True) is True
    _, keys = await consul_client.kv.get(prefix, keys=True)
    assert keys == [f"{prefix}y"]


async def test_kv_blocking_get_returns_when_key_changes(consul_client: Any, prefix: str) -> None:
    key = f"{prefix}watched"
    await consul_client.kv.put(key, "before")
    index, _ = await consul_client.kv.get(key)
    query = asyncio.create_task(consul_client.kv.get(key, index=index, wait="30s"))
    done, _ = await asyncio.wait({query}, timeout=0.3)
    assert not done
    await consul_client.kv.put(f"{prefix}other", "unrelated")
    done, _ = await asyncio.wait({query}, timeout=0.3)
    assert not done, "a change of another key woke the blocking read"
    await consul_client.kv.put(key, "after")
    new_index, entry = await asyncio.wait_for(query, timeout=3.0)
    assert int(new_index) > int(index) and entry["Value"] == b"after"
