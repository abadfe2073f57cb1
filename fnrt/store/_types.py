"""The values the stores exchange with the sources, the same for every backend.

Nothing here knows SQL: these are the rows a poller sees (a taken event, a shard, a
record, a checkpoint) and the small pure helpers that give sequence numbers and hash keys
their Kinesis shape. ``fnrt.store._queue`` and ``fnrt.store._streams`` re-export them
under their old names.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import attrs

# -- async invoke queue ---------------------------------------------------------------

EVENT_STATES = ("queued", "leased", "done", "failed")


@attrs.frozen
class QueuedEvent:
    """One taken (leased) event, as a poller sees it."""

    id: int
    request_id: str
    function: str
    payload: bytes
    enqueued_at: float
    attempts: int  # invocations that ended in a function error (use retry attempts)
    invokes: int  # invocations that reached the function (approximateInvokeCount)
    system_retries: int  # throttles and system errors so far (drive the backoff)
    lease: int  # the lease token this poller holds
    last_status: int | None = None
    last_error: str | None = None
    last_response: bytes | None = None


@attrs.frozen
class Outcome:
    """What happened to one attempt, to write back in one transaction.

    ``state`` is ``queued`` (try again at ``run_at``), ``done`` or ``failed``. The
    destination side effects go in the same transaction: ``sink_records`` as
    ``(sink, record)`` and ``events`` (records for function destinations) as
    ``(request_id, function, payload)``.
    """

    state: str
    run_at: float | None = None
    attempts: int = 0
    invokes: int = 0
    system_retries: int = 0
    status: int | None = None
    function_error: str | None = None
    response: bytes | None = None
    condition: str | None = None
    record: str | None = None
    sink_records: Sequence[tuple[str, str]] = ()
    events: Sequence[tuple[str, str, bytes]] = ()


# -- streams --------------------------------------------------------------------------

MAX_HASH_KEY = 2**128 - 1
#: A hash key as text, Kinesis' ``0|([1-9]\d{0,38})`` in ASCII digits only (``\d`` and
#: ``str.isdigit`` take any script's digits, which ``int`` may then refuse).
HASH_KEY_TEXT = re.compile(r"0|[1-9][0-9]{0,38}")
_SEQ_PREFIX = "49"
_SEQ_DIGITS = 54


_SEQ_FORMAT = f"{_SEQ_PREFIX}%0{_SEQ_DIGITS}d"  # %-formatting: a third of a nested f-string's cost


def seq_str(seq: int) -> str:
    """The sequence number users see: Kinesis-like, fixed width, sorts as a string."""
    return _SEQ_FORMAT % seq


def seq_int(seq: str) -> int:
    """The integer behind :func:`seq_str`; ``ValueError`` for anything else."""
    if len(seq) != len(_SEQ_PREFIX) + _SEQ_DIGITS or not seq.startswith(_SEQ_PREFIX) or not seq.isdigit():
        raise ValueError(f"not a sequence number: {seq!r}")
    return int(seq[len(_SEQ_PREFIX) :])


def hash_key(partition_key: str) -> int:
    """Kinesis maps a partition key to a 128-bit integer with MD5."""
    return int.from_bytes(hashlib.md5(partition_key.encode()).digest(), "big")


def shard_name(index: int) -> str:
    return f"shardId-{index:012d}"


@attrs.frozen
class Shard:
    shard_id: str
    start_hash: int
    end_hash: int
    parent: str | None
    adjacent_parent: str | None
    start_seq: int
    end_seq: int | None  # set when the shard is closed by a split or a merge

    @property
    def open(self) -> bool:
        return self.end_seq is None

    @property
    def parents(self) -> tuple[str, ...]:
        return tuple(p for p in (self.parent, self.adjacent_parent) if p)

    def to_dict(self) -> dict[str, Any]:
        """Kinesis' ``DescribeStream`` shape for one shard."""
        out: dict[str, Any] = {
            "ShardId": self.shard_id,
            "HashKeyRange": {"StartingHashKey": str(self.start_hash), "EndingHashKey": str(self.end_hash)},
            "SequenceNumberRange": {"StartingSequenceNumber": seq_str(self.start_seq)},
        }
        if self.end_seq is not None:
            out["SequenceNumberRange"]["EndingSequenceNumber"] = seq_str(self.end_seq)
        if self.parent:
            out["ParentShardId"] = self.parent
        if self.adjacent_parent:
            out["AdjacentParentShardId"] = self.adjacent_parent
        return out


class StoredRecord(NamedTuple):
    """One stream record as a poller reads it. A named tuple, not an attrs class: a read
    builds one per record, hundreds per batch, and a tuple costs a quarter as much."""

    seq: int
    partition_key: str
    data: str  # base64, as Lambda's event carries it
    arrival: float


@attrs.frozen
class MappingRow:
    uuid: str
    stream: str
    function: str
    config: dict[str, Any]
    filters: tuple[str, ...] = ()  # its FilterCriteria patterns (JSON text each)


@attrs.frozen
class Checkpoint:
    seq: int  # last sequence number done; -1 = before the first record
    finished: bool  # the (closed) shard was read to its end


__all__ = [
    "EVENT_STATES",
    "HASH_KEY_TEXT",
    "MAX_HASH_KEY",
    "Checkpoint",
    "MappingRow",
    "Outcome",
    "QueuedEvent",
    "Shard",
    "StoredRecord",
    "hash_key",
    "seq_int",
    "seq_str",
    "shard_name",
]
