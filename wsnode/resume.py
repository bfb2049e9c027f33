"""The client's side of delivery (pure): drop duplicate ids and detect gaps, as docs/protocol.md defines them.

A user's stored ids grow by one, so after `welcome.last` (the user's last stored id when the session started) the
next stored id must be `last + 1`, then `+ 2`, and so on. Ids at or below the point reached are a replay (or a
duplicate) and never a gap. A stored id beyond the next one means publications were missed: the client resumes by
reconnecting with `since=<the point reached>` and, meanwhile, does not show the id beyond the gap (it comes again,
in order, with the replay). Ids with a `-` are not stored (`store:false`, broadcasts) and are only deduplicated.

wsgate.js implements the same rule (`GapTracker` there); tests/wsnode/test_resume.py is its table.
"""

from __future__ import annotations

from collections import OrderedDict
from enum import Enum


class Verdict(Enum):
    """What a client does with one message frame."""

    DELIVER = "deliver"
    DUPLICATE = "duplicate"
    GAP = "gap"  # do not deliver; reconnect with since=ResumeTracker.point
    DELIVER_AFTER_GAP = "deliver_after_gap"  # only with allow_gap: delivered although ids were skipped


def stored_seq(message_id: str) -> int | None:
    """The sequence number of a stored message id, None for an ephemeral one."""
    if message_id.isascii() and message_id.isdigit() and len(message_id) <= 18:
        return int(message_id)
    return None


class ResumeTracker:
    """The point a client has reached in its user's stored ids, and the recent ids it has seen."""

    def __init__(self, *, since: str | None = None, remember: int = 2000) -> None:
        self.point: int | None = stored_seq(since) if since else None  # last contiguous stored id, None: unknown
        self.last_id: str | None = since  # last id delivered (what `since` would be without a gap)
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._remember = remember

    def welcome(self, last: object) -> None:
        """A welcome frame's `last` (absent on older nodes: the point is unknown until the next stored id)."""
        self.point = stored_seq(last) if isinstance(last, str) else None

    def message(self, message_id: str, *, allow_gap: bool = False) -> Verdict:
        """Classify a message frame's id (and remember it when it is delivered); `allow_gap` delivers across a gap."""
        if message_id in self._seen:
            return Verdict.DUPLICATE
        verdict = Verdict.DELIVER
        seq = stored_seq(message_id)
        if seq is not None:
            if self.point is not None and self.point > 0 and seq > self.point + 1:
                if not allow_gap:
                    return Verdict.GAP
                verdict = Verdict.DELIVER_AFTER_GAP
            if self.point is None or seq > self.point:
                self.point = seq
        self._seen[message_id] = None
        while len(self._seen) > self._remember:
            self._seen.popitem(last=False)
        self.last_id = message_id
        return verdict

    @property
    def resume_from(self) -> str | None:
        """The `since` to reconnect with: the point reached when known, else the last id delivered."""
        return str(self.point) if self.point else self.last_id
