"""Session.finish_replay on a transport (wsnode/sessions.py): the welcome and replayed frames go out in few writes,
in order, and the frames the transport would not take frame by frame go through the bounded queue as before."""

from __future__ import annotations

import asyncio

import pytest

from wsnode.envelope import text_frame
from wsnode.sessions import CLOSE_SLOW_CONSUMER, DIRECT_WRITE_MAX_BUFFERED_BYTES, Session


class FakeTransport:
    """Keeps every byte written in its buffer (`drains`: the peer reads everything at once instead)."""

    def __init__(self, *, drains: bool) -> None:
        self.drains = drains
        self.writes: list[bytes] = []
        self.buffered = 0

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        if not self.drains:
            self.buffered += len(data)

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return self.buffered


class FakeSocket:
    def __init__(self) -> None:
        self.sent: list[str] = []
        self.close_code: int | None = None

    async def send_str(self, data: str, compress: int | None = None) -> None:
        self.sent.append(data)

    async def close(self, *, code: int = 1000, message: bytes = b"", drain: bool = True) -> bool:
        self.close_code = code
        return True

    @property
    def closed(self) -> bool:
        return self.close_code is not None


def _frames(n: int) -> list[tuple[int, str]]:
    return [(100 + i, f'{{"type":"message","id":"{100 + i}","data":"{"x" * 80}"}}') for i in range(n)]


def _direct_one_by_one(texts: list[str]) -> int:
    """How many frames the frame-by-frame rule sends straight to a transport that keeps every byte."""
    buffered = 0
    for count, text in enumerate(texts):
        if buffered > DIRECT_WRITE_MAX_BUFFERED_BYTES:
            return count
        buffered += len(text_frame(text))
    return len(texts)


@pytest.mark.parametrize(("drains", "replayed", "max_queue", "most_writes", "closes"), [
    (True, 0, 10, 1, False),  # the welcome alone
    (True, 1000, 10, 2, False),  # 1000 frames of ~110 bytes in two writes, nothing queued
    (False, 1000, 1000, 1, False),  # the peer reads nothing: 64 KiB straight, the rest queued
    (False, 1000, 10, 1, True),  # ... and with a small queue: slow consumer, as frame by frame
])
async def test_a_replay_goes_out_whole_in_order_in_few_writes(
        drains: bool, replayed: int, max_queue: int, most_writes: int, closes: bool) -> None:
    transport, socket = FakeTransport(drains=drains), FakeSocket()
    session = Session("s1", "u", socket, max_queue=max_queue, rate_per_s=10, burst=10, abort=lambda: None,
                      transport=transport)
    frames = _frames(replayed)
    welcome = '{"type":"welcome"}'
    texts = [welcome, *(text for _, text in frames)]
    assert not session.finish_replay(welcome, frames, position=100 + replayed - 1)
    await asyncio.sleep(0)  # let the queue's writer (and a close) run
    await asyncio.sleep(0)

    assert len(transport.writes) <= most_writes
    direct = _direct_one_by_one(texts) if not drains else len(texts)
    assert b"".join(transport.writes) == b"".join(text_frame(t) for t in texts[:direct])
    assert session.last_id == 100 + replayed - 1 if replayed else session.last_id == 99
    if closes:
        assert socket.close_code == CLOSE_SLOW_CONSUMER
    else:
        assert socket.close_code is None
        assert socket.sent == texts[direct:]
