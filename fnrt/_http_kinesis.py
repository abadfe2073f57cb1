"""Kinesis' data plane over AWS's JSON 1.1 protocol, so boto3 ``kinesis`` producers work.

Requests are ``POST /`` with ``X-Amz-Target: Kinesis_20131202.<Operation>`` and a JSON
body (``application/x-amz-json-1.1``); answers and errors (``{"__type", "message"}``,
status 400) are Kinesis'. botocore speaks JSON to Kinesis; a client sending CBOR (the
Java SDK's default) gets a clear error telling it to disable CBOR.

Shard iterators are opaque tokens (base64 JSON of stream, shard, position and issue time)
that expire after 5 minutes, as Kinesis' do. Writes are limited per shard as Kinesis
limits them (1,000 records and 1 MiB per second, refilling continuously on the runtime's
clock); over the limit a ``PutRecords`` entry fails with
``ProvisionedThroughputExceededException`` in its slot and the others are written.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import re
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ._http_errors import AwsError
from ._runtime import Runtime
from .errors import FnrtError, InvalidConfig, InvalidPayload, ServiceError, StreamNotFound
from .sources._streams import STREAM_MODES, STREAM_NAME
from .store._streams import seq_int, seq_str  # fnrt-internal: the sequence-number format
from .store._types import HASH_KEY_TEXT, MAX_HASH_KEY

if TYPE_CHECKING:
    from .sources._streams import Stream

TARGET_PREFIX = "Kinesis_20131202."
MAX_RECORD = 1024 * 1024  # data + partition key
MAX_PUT_RECORDS = 500
MAX_PUT_RECORDS_BYTES = 5 * 1024 * 1024
MAX_GET_RECORDS = 10_000
MAX_GET_RECORDS_BYTES = 10 * 1024 * 1024  # data + partition keys returned by one GetRecords
_READ_CAP = MAX_GET_RECORDS_BYTES * 4 // 3 + 4 * 1024  # base64 of a page, and its keys
ITERATOR_TTL = 300.0
NEXT_TOKEN_TTL = 300.0  # ListShards' NextToken
ON_DEMAND_SHARDS = 4
ON_DEMAND_STREAM_LIMIT = 50  # Kinesis' default quota of on-demand streams per account
MIN_RETENTION_HOURS, MAX_RETENTION_HOURS = 24, 8760
MAX_TAGS = 50  # per stream, and per AddTagsToStream, RemoveTagsFromStream or ListTagsForStream
SHARD_LIMIT = 10_000  # open shards per account and region (Kinesis' shard quota; fnrt's own)
SHARD_RECORDS_PER_SECOND = 1000
SHARD_BYTES_PER_SECOND = 1024 * 1024
_ARN = re.compile(r"arn:aws[\w-]*:kinesis:([\w-]+):(\d{12}):stream/([\w.-]+)\Z")
_HASH_KEY_PATTERN = r"0|([1-9]\d{0,38})"  # as Kinesis' messages spell it
_SEQUENCE_PATTERN = re.compile(r"0|[1-9][0-9]{0,128}")  # a SequenceNumber's shape


def _bad(message: str, error_type: str = "ValidationException") -> AwsError:
    return AwsError(400, error_type, message)


_SHARD_FILTERS = ("AFTER_SHARD_ID", "AT_TRIM_HORIZON", "FROM_TRIM_HORIZON", "AT_LATEST", "AT_TIMESTAMP",
                  "FROM_TIMESTAMP")


def _filter_shards(
    shards: list[dict[str, Any]], shard_filter: Any, horizon: int | None = None
) -> list[dict[str, Any]]:
    """ListShards' ``ShardFilter``: ``AFTER_SHARD_ID`` (the shards after ``ShardId``),
    ``AT_LATEST`` (the open ones), ``FROM_TRIM_HORIZON`` (every shard kept: all of fnrt's),
    ``AT_TRIM_HORIZON`` (those open at the trim horizon: the stream's oldest record kept,
    ``horizon``, is inside their sequence number range). The kinds that need a shard's
    opening and closing times are refused: fnrt does not keep them."""
    if shard_filter is None:
        return shards
    kind = shard_filter.get("Type") if isinstance(shard_filter, dict) else None
    if kind not in _SHARD_FILTERS:
        raise _bad(
            f"1 validation error detected: Value '{kind}' at 'shardFilter.type' failed to satisfy "
            f"constraint: Member must satisfy enum value set: [{', '.join(_SHARD_FILTERS)}]"
        )
    if kind == "AFTER_SHARD_ID":
        after = shard_filter.get("ShardId")
        if not isinstance(after, str):
            raise _bad("the AFTER_SHARD_ID shard filter needs a ShardId", "InvalidArgumentException")
        return [s for s in shards if s["ShardId"] > after]
    if kind == "AT_LATEST":
        return [s for s in shards if not _closed(s)]
    if kind == "FROM_TRIM_HORIZON":
        return shards
    if kind == "AT_TRIM_HORIZON":
        if horizon is None:  # no record kept: the trim horizon is now
            return [s for s in shards if not _closed(s)]
        return [s for s in shards if _open_at(s, horizon)]
    raise _bad(f"fnrt does not support the {kind} shard filter", "InvalidArgumentException")


def _open_at(shard: dict[str, Any], number: int) -> bool:
    """The shard was open when the stream gave out sequence number ``number``."""
    numbers = shard["SequenceNumberRange"]
    ending = numbers.get("EndingSequenceNumber")
    started = seq_int(numbers["StartingSequenceNumber"]) <= number
    return started and (ending is None or number <= seq_int(ending))


def _str(body: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise _bad(f"1 validation error detected: Value null at '{key}' failed to satisfy constraint: "
                       "Member must not be null")
        return None
    if not isinstance(value, str):
        raise _bad(f"{key} must be a string")
    return value


def _int(
    body: dict[str, Any],
    key: str,
    default: int,
    low: int,
    high: int,
    error_type: str = "ValidationException",
) -> int:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _bad(f"{key} must be an integer {low}-{high}, got {value!r}", error_type)
    return value


def _hash_key(value: Any, member: str) -> int:
    """A hash key in Kinesis' text form: off the pattern is ``ValidationException`` (the
    request's shape); past 2**128-1 the caller says what it is."""
    if not isinstance(value, str) or not HASH_KEY_TEXT.fullmatch(value):
        raise _bad(
            f"1 validation error detected: Value '{value}' at '{member}' failed to satisfy "
            f"constraint: Member must satisfy regular expression pattern: {_HASH_KEY_PATTERN}"
        )
    return int(value)


def _tags(value: Any, member: str) -> dict[str, str]:
    """A ``Tags`` map: keys of 1-128 characters, values of 0-256."""
    if not isinstance(value, dict) or not value:
        raise _bad(
            f"1 validation error detected: Value at '{member}' failed to satisfy constraint: Member must "
            "be a map of at least 1 entry"
        )
    for key, tag in value.items():
        if not 1 <= len(key) <= 128 or not isinstance(tag, str) or len(tag) > 256:
            raise _bad(
                f"1 validation error detected: Value at '{member}' failed to satisfy constraint: each "
                "key must have length between 1 and 128 and each value a string of at most 256",
            )
    return dict(value)


def _stream_mode(body: dict[str, Any]) -> str:
    """``StreamModeDetails.StreamMode`` of a ``CreateStream`` (``PROVISIONED`` by default)."""
    details = body.get("StreamModeDetails")
    if details is None:
        return "PROVISIONED"
    mode = details.get("StreamMode") if isinstance(details, dict) else None
    if mode not in STREAM_MODES:
        raise _bad(
            f"1 validation error detected: Value '{mode}' at 'streamModeDetails.streamMode' failed to "
            f"satisfy constraint: Member must satisfy enum value set: [{', '.join(STREAM_MODES)}]"
        )
    return str(mode)


def _closed(shard: dict[str, Any]) -> bool:
    """A shard of ``Stream.shards()`` is closed: its range has an end."""
    return "EndingSequenceNumber" in shard["SequenceNumberRange"]


def _data_size(data: str) -> int:
    """The size of the bytes a base64 string holds, without decoding it."""
    return len(data) // 4 * 3 - (2 if data.endswith("==") else 1 if data.endswith("=") else 0)


def _token(payload: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode()


def _untoken(token: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, binascii.Error):
        value = None
    if not isinstance(value, dict):
        raise _bad(f"{what} is not valid", "InvalidArgumentException")
    return value


class _Bucket:
    """A continuously refilling allowance (records and bytes per second) for one shard."""

    __slots__ = ("bytes", "records", "updated")

    def __init__(self, now: float) -> None:
        self.records = float(SHARD_RECORDS_PER_SECOND)
        self.bytes = float(SHARD_BYTES_PER_SECOND)
        self.updated = now

    def take(self, size: int, now: float) -> bool:
        elapsed = max(0.0, now - self.updated)
        self.updated = now
        self.records = min(SHARD_RECORDS_PER_SECOND, self.records + elapsed * SHARD_RECORDS_PER_SECOND)
        self.bytes = min(SHARD_BYTES_PER_SECOND, self.bytes + elapsed * SHARD_BYTES_PER_SECOND)
        if self.records < 1 - 1e-6 or self.bytes < size - 1e-6:  # (float refills)
            return False
        self.records -= 1
        self.bytes -= size
        return True


class KinesisApi:
    """``POST /`` with ``X-Amz-Target: Kinesis_20131202.*``."""

    def __init__(self, runtime: Runtime, *, write_limits: bool = True) -> None:
        self.runtime = runtime
        self.write_limits = write_limits
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._updating: dict[str, asyncio.Lock] = {}  # UpdateShardCount under way, per stream

    async def handle(self, request: web.Request) -> web.Response:
        target = request.headers.get("X-Amz-Target", "")
        if request.method != "POST" or not target.startswith(TARGET_PREFIX):
            raise AwsError(400, "UnknownOperationException", f"Unknown operation {target!r}")
        content_type = request.headers.get("Content-Type", "")
        if "cbor" in content_type:
            raise AwsError(
                400,
                "SerializationException",
                "fnrt speaks Kinesis' JSON protocol only: disable CBOR in the client "
                "(AWS_CBOR_DISABLE=1 for the Java SDK and KCL)",
            )
        operation = getattr(self, "_op_" + target[len(TARGET_PREFIX) :], None)
        if operation is None:
            raise AwsError(400, "UnknownOperationException", f"Unknown operation {target!r}")
        try:
            body = json.loads(await request.read() or b"{}")
        except (ValueError, RecursionError):
            raise _bad("the request body is not JSON", "SerializationException") from None
        if not isinstance(body, dict):
            raise _bad("the request body must be a JSON object", "SerializationException")
        try:
            result = await operation(body)
        except StreamNotFound as exc:
            raise AwsError(
                400, "ResourceNotFoundException", f"Stream {exc.name} under account "
                f"{self.runtime.config.account_id} not found."
            ) from None
        except (InvalidConfig, InvalidPayload) as exc:
            raise _bad(str(exc), "InvalidArgumentException") from None
        except ServiceError as exc:
            raise AwsError(500, "InternalFailure", str(exc)) from None
        except FnrtError as exc:
            raise AwsError(500, "InternalFailure", str(exc)) from None
        return web.Response(
            body=json.dumps(result).encode(),
            content_type="application/x-amz-json-1.1",
        )

    # -- helpers ------------------------------------------------------------------------

    async def _stream(self, body: dict[str, Any]) -> Stream:
        name = body.get("StreamName")
        arn = body.get("StreamARN")
        if name is None and isinstance(arn, str):
            match = _ARN.match(arn)
            if match is None:
                raise _bad(f"StreamARN {arn!r} is not a Kinesis stream ARN")
            region, account, name = match.groups()
            config = self.runtime.config
            if (region, account) != (config.region, config.account_id):  # not one of ours
                raise AwsError(404, "ResourceNotFoundException", f"Stream {arn} not found.")
        if not isinstance(name, str) or not name:
            raise _bad("StreamName or StreamARN is required")
        return await self.runtime.get_stream(name)

    async def _shard_list(self, stream: Stream) -> list[dict[str, Any]]:
        return await stream.shards()

    async def _description(self, stream: Stream) -> dict[str, Any]:
        info = await stream.info()
        return {
            "StreamName": stream.name,
            "StreamARN": stream.arn,
            "StreamStatus": "ACTIVE",
            "StreamModeDetails": {"StreamMode": info["mode"]},
            "RetentionPeriodHours": int(info["retention_hours"]),
            "StreamCreationTimestamp": info["created_at"],
            "EnhancedMonitoring": [{"ShardLevelMetrics": []}],
            "EncryptionType": "NONE",
        }

    # -- streams ------------------------------------------------------------------------

    async def _op_CreateStream(self, body: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        name = _str(body, "StreamName")
        assert name is not None
        if not STREAM_NAME.fullmatch(name):
            raise _bad(
                f"1 validation error detected: Value '{name}' at 'streamName' failed to satisfy "
                "constraint: Member must satisfy regular expression pattern: [a-zA-Z0-9_.-]+ and "
                "Member must have length between 1 and 128"
            )
        mode = _stream_mode(body)
        if mode == "ON_DEMAND":
            if body.get("ShardCount") is not None:
                raise _bad(
                    "ShardCount is not allowed for a stream in ON_DEMAND mode", "InvalidArgumentException"
                )
            # On-demand capacity starts at 4 MiB/s of writes: four shards' worth.
            shard_count = ON_DEMAND_SHARDS
        else:
            shard_count = _int(body, "ShardCount", 1, 1, 2**31 - 1)
        try:
            await self.runtime.get_stream(name)
        except StreamNotFound:
            pass
        else:
            raise AwsError(
                400,
                "ResourceInUseException",
                f"Stream {name} under account {self.runtime.config.account_id} already exists.",
            )
        tags = _tags(body.get("Tags"), "tags") if body.get("Tags") is not None else {}
        if len(tags) > MAX_TAGS:  # refused before the stream is made, not after
            raise _bad(
                f"1 validation error detected: Value at 'tags' failed to satisfy constraint: Member must "
                f"have length less than or equal to {MAX_TAGS}"
            )
        await self._check_shard_limit(shard_count)
        stream = await self.runtime.create_stream(name, shard_count, mode=mode)
        if tags:
            await stream.update(tags=tags)
        return {}

    async def _op_UpdateStreamMode(self, body: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        """The stream's capacity mode: reported by the describes; the shards stay as they
        are (as Kinesis', whose capacity changes beneath them)."""
        arn = _str(body, "StreamARN")
        if body.get("StreamModeDetails") is None:
            raise _bad("1 validation error detected: Value null at 'streamModeDetails' failed to satisfy "
                       "constraint: Member must not be null")
        mode = _stream_mode(body)
        stream = await self._stream({"StreamARN": arn})
        await stream.update(mode=mode)
        return {}

    async def _op_IncreaseStreamRetentionPeriod(self, body: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        return await self._retention(body, increase=True)

    async def _op_DecreaseStreamRetentionPeriod(self, body: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        return await self._retention(body, increase=False)

    async def _retention(self, body: dict[str, Any], *, increase: bool) -> dict[str, Any]:
        """Kinesis' retention changes: 24-8760 hours, up only by Increase and down only by
        Decrease (the same value is accepted by both); records older than a shortened
        retention go at the next trim."""
        stream = await self._stream(body)
        value = body.get("RetentionPeriodHours")
        if value is None:
            raise _bad("1 validation error detected: Value null at 'retentionPeriodHours' failed to "
                       "satisfy constraint: Member must not be null")
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(f"RetentionPeriodHours must be an integer, got {value!r}")
        if not MIN_RETENTION_HOURS <= value <= MAX_RETENTION_HOURS:
            raise _bad(
                f"Minimum allowed retention period is {MIN_RETENTION_HOURS} hours. Maximum allowed "
                f"retention period is {MAX_RETENTION_HOURS} hours. Requested retention period "
                f"({value} hours) is out of range.",
                "InvalidArgumentException",
            )
        current = int((await stream.info())["retention_hours"])
        if increase and value < current:
            raise _bad(
                f"Requested retention period ({value} hours) for stream {stream.name} can not be shorter "
                f"than existing retention period ({current} hours). Use DecreaseRetentionPeriod API.",
                "InvalidArgumentException",
            )
        if not increase and value > current:
            raise _bad(
                f"Requested retention period ({value} hours) for stream {stream.name} can not be longer "
                f"than existing retention period ({current} hours). Use IncreaseRetentionPeriod API.",
                "InvalidArgumentException",
            )
        await stream.update(retention_hours=value)
        return {}

    # -- tags ---------------------------------------------------------------------------

    async def _op_AddTagsToStream(self, body: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        stream = await self._stream(body)
        if body.get("Tags") is None:
            raise _bad("1 validation error detected: Value null at 'tags' failed to satisfy constraint: "
                       "Member must not be null")
        added = _tags(body["Tags"], "tags")
        if len(added) > MAX_TAGS:
            raise _bad(
                f"1 validation error detected: Value at 'tags' failed to satisfy constraint: Member must "
                f"have length less than or equal to {MAX_TAGS}"
            )
        tags = {**(await stream.info())["tags"], **added}
        if len(tags) > MAX_TAGS:
            raise _bad(
                f"Failed to add tags to stream {stream.name} under account {self.runtime.config.account_id} "
                f"because a given stream cannot have more than {MAX_TAGS} tags associated with it.",
                "InvalidArgumentException",
            )
        await stream.update(tags=tags)
        return {}

    async def _op_RemoveTagsFromStream(self, body: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        stream = await self._stream(body)
        keys = body.get("TagKeys")
        if not isinstance(keys, list) or not 1 <= len(keys) <= MAX_TAGS or not all(
            isinstance(k, str) and 1 <= len(k) <= 128 for k in keys
        ):
            raise _bad(
                "1 validation error detected: Value at 'tagKeys' failed to satisfy constraint: Member must "
                f"have length between 1 and {MAX_TAGS}, each key 1-128 characters"
            )
        tags = (await stream.info())["tags"]
        await stream.update(tags={k: v for k, v in tags.items() if k not in keys})
        return {}

    async def _op_ListTagsForStream(self, body: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        stream = await self._stream(body)
        limit = _int(body, "Limit", MAX_TAGS, 1, MAX_TAGS)
        start = _str(body, "ExclusiveStartTagKey", required=False)
        keys = sorted((await stream.info())["tags"].items())
        if start is not None:
            keys = [(k, v) for k, v in keys if k > start]
        return {
            "Tags": [{"Key": k, "Value": v} for k, v in keys[:limit]],
            "HasMoreTags": len(keys) > limit,
        }

    async def _op_DescribeLimits(self, body: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        """The account's shard quota (fnrt's ``SHARD_LIMIT``) and what the streams use of it."""
        open_shards = on_demand = 0
        for name in await self.runtime.list_streams():
            try:
                stream = await self.runtime.get_stream(name)
                shards, info = await stream.shards(), await stream.info()
            except StreamNotFound:  # deleted meanwhile (by another host)
                continue
            open_shards += sum(1 for s in shards if not _closed(s))
            on_demand += info["mode"] == "ON_DEMAND"
        return {
            "ShardLimit": SHARD_LIMIT,
            "OpenShardCount": open_shards,
            "OnDemandStreamCount": on_demand,
            "OnDemandStreamCountLimit": ON_DEMAND_STREAM_LIMIT,
        }

    async def _op_ListStreamConsumers(self, body: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        """fnrt has no enhanced fan-out consumers: a stream's list is empty."""
        await self._stream({"StreamARN": _str(body, "StreamARN")})
        _int(body, "MaxResults", 100, 1, 10_000)
        return {"Consumers": []}

    async def _check_shard_limit(self, more: int) -> None:
        """Kinesis' account shard quota: open shards over every stream, ``SHARD_LIMIT`` here."""
        open_shards = 0
        for name in await self.runtime.list_streams():
            shards = await (await self.runtime.get_stream(name)).shards()
            open_shards += sum(1 for s in shards if not _closed(s))
        if open_shards + more > SHARD_LIMIT:
            config = self.runtime.config
            raise AwsError(
                400,
                "LimitExceededException",
                f"This request would exceed the shard limit for the account {config.account_id} in "
                f"{config.region}. Current limit of shards is {SHARD_LIMIT} ({open_shards} open). "
                "Delete streams or merge shards first.",
            )

    async def _op_DeleteStream(self, body: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        """The stream and its records go; its event source mappings stay, disabled, as
        Lambda's do (fnrt has no registered consumers, so ``EnforceConsumerDeletion``
        changes nothing)."""
        enforce = body.get("EnforceConsumerDeletion")
        if enforce is not None and not isinstance(enforce, bool):
            raise _bad(
                f"1 validation error detected: Value '{enforce}' at 'enforceConsumerDeletion' failed to "
                "satisfy constraint: Member must be a boolean"
            )
        stream = await self._stream(body)
        await self.runtime.delete_stream(stream.name)
        for key in [k for k in self._buckets if k[0] == stream.name]:
            del self._buckets[key]
        return {}

    async def _op_ListStreams(self, body: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        limit = min(_int(body, "Limit", 100, 1, 10_000), 100)  # past 100, 100 (as Kinesis)
        names = await self.runtime.list_streams()
        start = body.get("ExclusiveStartStreamName")
        token = body.get("NextToken")
        if isinstance(token, str):
            start = _untoken(token, "NextToken").get("after")
        if isinstance(start, str):
            names = [n for n in names if n > start]
        page, more = names[:limit], len(names) > limit
        summaries = []
        for name in page:
            stream = await self.runtime.get_stream(name)
            info = await stream.info()
            summaries.append(
                {
                    "StreamName": name,
                    "StreamARN": stream.arn,
                    "StreamStatus": "ACTIVE",
                    "StreamModeDetails": {"StreamMode": info["mode"]},
                    "StreamCreationTimestamp": info["created_at"],
                }
            )
        out: dict[str, Any] = {"StreamNames": page, "HasMoreStreams": more, "StreamSummaries": summaries}
        if more:
            out["NextToken"] = _token({"after": page[-1]})
        return out

    async def _op_DescribeStream(self, body: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        stream = await self._stream(body)
        limit = min(_int(body, "Limit", 100, 1, 10_000), 100)  # past 100, 100 (as Kinesis)
        shards = await self._shard_list(stream)
        start = body.get("ExclusiveStartShardId")
        if isinstance(start, str):
            shards = [s for s in shards if s["ShardId"] > start]
        description = await self._description(stream)
        description["Shards"] = shards[:limit]
        description["HasMoreShards"] = len(shards) > limit
        return {"StreamDescription": description}

    async def _op_DescribeStreamSummary(self, body: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        stream = await self._stream(body)
        summary = await self._description(stream)
        shards = await self._shard_list(stream)
        summary["OpenShardCount"] = sum(1 for s in shards if not _closed(s))
        summary["ConsumerCount"] = 0
        return {"StreamDescriptionSummary": summary}

    async def _op_ListShards(self, body: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        """Past 1,000 ``MaxResults``, 1,000; a ``NextToken`` names its stream, its place and
        its filter, and expires after 300 seconds (``ExpiredNextTokenException``), as Kinesis'."""
        token = body.get("NextToken")
        if isinstance(token, str):
            for member in ("StreamName", "StreamARN", "ExclusiveStartShardId", "StreamCreationTimestamp"):
                if body.get(member) is not None:
                    raise _bad(
                        f"NextToken and {member} cannot be provided together.", "InvalidArgumentException"
                    )
            state = _untoken(token, "NextToken")
            issued = state.get("t")
            if isinstance(issued, int | float) and self.runtime.clock.time() - issued > NEXT_TOKEN_TTL:
                raise AwsError(
                    400,
                    "ExpiredNextTokenException",
                    f"The timestamp of the last ListShard call was {issued} while right now it is "
                    f"{self.runtime.clock.time()}; NextToken is only valid for {int(NEXT_TOKEN_TTL)} "
                    "seconds.",
                )
            limit = _int(body, "MaxResults", int(state.get("limit", 1000)), 1, 10_000)
            shard_filter = state.get("filter")
            body = {"StreamName": state.get("stream"), "ExclusiveStartShardId": state.get("after")}
        else:
            limit = _int(body, "MaxResults", 1000, 1, 10_000)
            shard_filter = body.get("ShardFilter")
        limit = min(limit, 1000)  # past 1,000, 1,000 (as Kinesis)
        stream = await self._stream(body)
        shards = await self._shard_list(stream)
        horizon = None
        if isinstance(shard_filter, dict) and shard_filter.get("Type") == "AT_TRIM_HORIZON":
            oldest = [r for s in shards for r in await stream.read(s["ShardId"], None, 1)]
            horizon = min((seq_int(r["SequenceNumber"]) for r in oldest), default=None)
        shards = _filter_shards(shards, shard_filter, horizon)
        start = body.get("ExclusiveStartShardId")
        if isinstance(start, str):
            shards = [s for s in shards if s["ShardId"] > start]
        out: dict[str, Any] = {"Shards": shards[:limit]}
        if len(shards) > limit:
            after = shards[limit - 1]["ShardId"]
            state = {
                "stream": stream.name,
                "after": after,
                "limit": limit,
                "filter": shard_filter,
                "t": self.runtime.clock.time(),
            }
            out["NextToken"] = _token(state)
        return out

    async def _op_SplitShard(self, body: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        stream = await self._stream(body)
        shard = _str(body, "ShardToSplit")
        new_start = _str(body, "NewStartingHashKey")
        assert shard is not None
        starting = _hash_key(new_start, "newStartingHashKey")
        await self._provisioned(stream, "SplitShard")
        await self._open_shards(stream, shard)
        await self._check_shard_limit(1)  # two children open where one shard closes
        # off the pattern: ValidationException; outside the shard's range: split_shard's
        # InvalidConfig, InvalidArgumentException
        await stream.split_shard(shard, starting)
        return {}

    async def _op_UpdateShardCount(self, body: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        """``UNIFORM_SCALING`` to ``TargetShardCount`` open shards, within Kinesis' limits (at
        most double, at least half the open shards); done when it answers (Kinesis' is
        asynchronous: the stream is ``UPDATING`` meanwhile, and a second update is refused)."""
        stream = await self._stream(body)
        target = body.get("TargetShardCount")
        if target is None:
            raise _bad("1 validation error detected: Value null at 'targetShardCount' failed to satisfy "
                       "constraint: Member must not be null")
        target = _int(body, "TargetShardCount", 1, 1, 2**31 - 1)
        scaling = body.get("ScalingType")
        if scaling != "UNIFORM_SCALING":
            raise _bad(
                f"1 validation error detected: Value '{scaling}' at 'scalingType' failed to satisfy "
                "constraint: Member must satisfy enum value set: [UNIFORM_SCALING]"
            )
        await self._provisioned(stream, "UpdateShardCount")
        lock = self._updating.setdefault(stream.name, asyncio.Lock())
        if lock.locked():
            raise AwsError(
                400,
                "ResourceInUseException",
                f"Stream {stream.name} under account {self.runtime.config.account_id} not ACTIVE, "
                "instead in state UPDATING",
            )
        async with lock:
            current = sum(1 for s in await stream.shards() if not _closed(s))
            if target > SHARD_LIMIT:
                raise AwsError(
                    400,
                    "LimitExceededException",
                    f"Target shard count or number of open shards cannot be greater than {SHARD_LIMIT}. "
                    f"Current open shard count: {current}, Target shard count: {target}",
                )
            for wrong, message in (
                (target > current * 2, "scale up over double"),
                (target * 2 < current, "scale down below half"),
            ):
                if wrong:
                    raise AwsError(
                        400,
                        "LimitExceededException",
                        f"UpdateShardCount cannot {message} your current open shard count. Current open "
                        f"shard count: {current}, Target shard count: {target}",
                    )
            await self._check_shard_limit(max(0, target - current))
            await stream.update_shard_count(target)
        return {
            "StreamName": stream.name,
            "StreamARN": stream.arn,
            "CurrentShardCount": current,
            "TargetShardCount": target,
        }

    async def _provisioned(self, stream: Stream, operation: str) -> None:
        """Resharding is the provisioned mode's: an on-demand stream's capacity is Kinesis'."""
        if (await stream.info())["mode"] != "PROVISIONED":
            raise _bad(f"{operation} is not supported for a stream in ON_DEMAND capacity mode "
                       f"(stream {stream.name}); update the stream mode to PROVISIONED first")

    async def _op_MergeShards(self, body: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        stream = await self._stream(body)
        shard = _str(body, "ShardToMerge")
        adjacent = _str(body, "AdjacentShardToMerge")
        assert shard is not None and adjacent is not None
        await self._provisioned(stream, "MergeShards")
        await self._open_shards(stream, shard, adjacent)
        await stream.merge_shards(shard, adjacent)
        return {}

    async def _open_shards(self, stream: Stream, *shard_ids: str) -> None:
        """Kinesis' answers for a shard to split or merge: unknown, ``ResourceNotFoundException``;
        closed already, ``InvalidArgumentException``."""
        shards = {s["ShardId"]: s for s in await stream.shards()}
        account = self.runtime.config.account_id
        for shard_id in shard_ids:
            shard = shards.get(shard_id)
            if shard is None:
                raise AwsError(
                    400,
                    "ResourceNotFoundException",
                    f"Shard {shard_id} in stream {stream.name} under account {account} does not exist",
                )
            if _closed(shard):
                raise _bad(
                    f"Shard {shard_id} in stream {stream.name} under account {account} has already been "
                    "merged or split, and thus is not eligible for merging or splitting.",
                    "InvalidArgumentException",
                )

    # -- writes -------------------------------------------------------------------------

    def _entry(self, record: Any) -> tuple[bytes, str, int | None]:
        if not isinstance(record, dict):
            raise _bad("each record must be an object")
        data, key, explicit = record.get("Data"), record.get("PartitionKey"), record.get("ExplicitHashKey")
        if not isinstance(data, str):
            raise _bad("1 validation error detected: Value null at 'data' failed to satisfy constraint: "
                       "Member must not be null")
        try:
            raw = base64.b64decode(data, validate=True)
        except (ValueError, binascii.Error):
            raise _bad("Data must be base64-encoded", "SerializationException") from None
        if not isinstance(key, str) or not 1 <= len(key) <= 256:
            raise _bad(
                f"1 validation error detected: Value '{key}' at 'partitionKey' failed to satisfy "
                "constraint: Member must have length between 1 and 256"
            )
        if len(raw) + len(key.encode()) > MAX_RECORD:
            raise _bad(
                f"1 validation error detected: Value at 'data' failed to satisfy constraint: Member must "
                f"have length less than or equal to {MAX_RECORD}"
            )
        hashed: int | None = None
        if explicit is not None:
            hashed = _hash_key(explicit, "explicitHashKey")
            if hashed > MAX_HASH_KEY:
                raise _bad(
                    f"Invalid ExplicitHashKey. ExplicitHashKey must be in the range: [0, {MAX_HASH_KEY}]. "
                    f"Specified value was {explicit}",
                    "InvalidArgumentException",
                )
        return raw, key, hashed

    async def _admit(self, stream: Stream, entries: list[tuple[bytes, str, int | None]]) -> list[bool]:
        """Which entries the shards' write limits let through now."""
        if not self.write_limits:
            return [True] * len(entries)
        ranges = [
            (int(s["HashKeyRange"]["StartingHashKey"]), int(s["HashKeyRange"]["EndingHashKey"]), s["ShardId"])
            for s in await stream.shards()
            if not _closed(s)
        ]
        now = self.runtime.clock.monotonic()
        out = []
        for raw, key, explicit in entries:
            hashed = explicit if explicit is not None else int.from_bytes(hashlib.md5(key.encode()).digest())
            shard = next((s for lo, hi, s in ranges if lo <= hashed <= hi), "")
            bucket = self._buckets.get((stream.name, shard))
            if bucket is None:
                bucket = self._buckets[(stream.name, shard)] = _Bucket(now)
            out.append(bucket.take(len(raw) + len(key.encode()), now))
        return out

    def _throughput_message(self, stream: Stream) -> str:
        return f"Rate exceeded for stream {stream.name} under account {self.runtime.config.account_id}."

    async def _op_PutRecord(self, body: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        """``SequenceNumberForOrdering`` is checked and needs nothing more: a stream's numbers
        increase with every put, so a key's records are strictly ordered already."""
        stream = await self._stream(body)
        ordering = body.get("SequenceNumberForOrdering")
        if ordering is not None and not (isinstance(ordering, str) and _SEQUENCE_PATTERN.fullmatch(ordering)):
            raise _bad(
                f"1 validation error detected: Value '{ordering}' at 'sequenceNumberForOrdering' failed to "
                "satisfy constraint: Member must satisfy regular expression pattern: 0|([1-9]\\d{0,128})"
            )
        entry = self._entry(body)
        [admitted] = await self._admit(stream, [entry])
        if not admitted:
            raise AwsError(400, "ProvisionedThroughputExceededException", self._throughput_message(stream))
        shard_id, seq = await stream.put_record(entry[0], entry[1], explicit_hash_key=entry[2])
        return {"ShardId": shard_id, "SequenceNumber": seq, "EncryptionType": "NONE"}

    async def _op_PutRecords(self, body: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        stream = await self._stream(body)
        records = body.get("Records")
        if not isinstance(records, list) or not 1 <= len(records) <= MAX_PUT_RECORDS:
            raise _bad(
                "1 validation error detected: Value at 'records' failed to satisfy constraint: Member "
                f"must have length between 1 and {MAX_PUT_RECORDS}"
            )
        entries = [self._entry(r) for r in records]
        total = sum(len(raw) + len(key.encode()) for raw, key, _ in entries)
        if total > MAX_PUT_RECORDS_BYTES:
            raise _bad(
                f"Records size exceeds {MAX_PUT_RECORDS_BYTES} bytes limit", "InvalidArgumentException"
            )
        admitted = await self._admit(stream, entries)
        accepted = [e for e, ok in zip(entries, admitted, strict=True) if ok]
        try:
            placed = iter(await stream.put_records(accepted))
        except ServiceError as exc:  # the store failed: every entry failed, retryable
            failed = {"ErrorCode": "InternalFailure", "ErrorMessage": f"Internal service failure: {exc}"}
            return {"FailedRecordCount": len(entries), "Records": [dict(failed) for _ in entries],
                    "EncryptionType": "NONE"}
        out = []
        for ok in admitted:
            if ok:
                shard_id, seq = next(placed)
                out.append({"ShardId": shard_id, "SequenceNumber": seq})
            else:
                out.append(
                    {
                        "ErrorCode": "ProvisionedThroughputExceededException",
                        "ErrorMessage": self._throughput_message(stream),
                    }
                )
        return {
            "FailedRecordCount": sum(1 for ok in admitted if not ok),
            "Records": out,
            "EncryptionType": "NONE",
        }

    # -- reads --------------------------------------------------------------------------

    async def _op_GetShardIterator(self, body: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        stream = await self._stream(body)
        shard_id = _str(body, "ShardId")
        kind = _str(body, "ShardIteratorType")
        shards = {s["ShardId"]: s for s in await stream.shards()}
        if shard_id not in shards:
            raise AwsError(
                400,
                "ResourceNotFoundException",
                f"Shard {shard_id} in stream {stream.name} under account "
                f"{self.runtime.config.account_id} does not exist",
            )
        after: str | None = None
        not_before: float | None = None
        if kind in ("AT_SEQUENCE_NUMBER", "AFTER_SEQUENCE_NUMBER"):
            seq = _str(body, "StartingSequenceNumber")
            assert seq is not None
            try:
                number = seq_int(seq)
            except ValueError:
                raise _bad(f"StartingSequenceNumber {seq} is not a sequence number of this stream",
                           "InvalidArgumentException") from None
            # Numbers count per stream (the encoding names no shard), so what can be told
            # without a lookup is the shard's sequence number range: below its start or
            # past a closed shard's end, the number is of another shard.
            numbers = shards[shard_id]["SequenceNumberRange"]
            ending = numbers.get("EndingSequenceNumber")
            if number < seq_int(numbers["StartingSequenceNumber"]) or (
                ending is not None and number > seq_int(ending)
            ):
                raise _bad(
                    f"Invalid StartingSequenceNumber. {seq} is not in the sequence number range of "
                    f"{shard_id} in stream {stream.name}",
                    "InvalidArgumentException",
                )
            if not await self._of_shard(stream, str(shard_id), number):
                raise _bad(
                    f"Invalid StartingSequenceNumber. {seq} is not a sequence number of a record of "
                    f"{shard_id} in stream {stream.name}",
                    "InvalidArgumentException",
                )
            if kind == "AT_SEQUENCE_NUMBER":
                after = seq_str(number - 1) if number > 0 else None
            else:
                after = seq
        elif kind == "TRIM_HORIZON":
            after = None
        elif kind == "LATEST":
            after = (await stream.info())["last_sequence_number"]
        elif kind == "AT_TIMESTAMP":
            stamp = body.get("Timestamp")
            if isinstance(stamp, bool) or not isinstance(stamp, int | float):
                raise _bad("AT_TIMESTAMP needs a Timestamp", "InvalidArgumentException")
            not_before = float(stamp)
        else:
            raise _bad(
                f"1 validation error detected: Value '{kind}' at 'shardIteratorType' failed to satisfy "
                "constraint: Member must satisfy enum value set: [AT_SEQUENCE_NUMBER, "
                "AFTER_SEQUENCE_NUMBER, TRIM_HORIZON, LATEST, AT_TIMESTAMP]"
            )
        return {"ShardIterator": self._iterator(stream.name, shard_id or "", after, not_before)}

    async def _of_shard(self, stream: Stream, shard_id: str, number: int) -> bool:
        """Whether ``number`` may be a record of ``shard_id``. Every number the stream gave
        out is one record's, in one shard, and a shard is trimmed oldest first: a number
        past the newest given out is nobody's, and one this shard does not hold, above its
        oldest record, is another shard's. Below that it may have been trimmed: allowed
        (the iterator starts at the trim horizon)."""
        last = (await stream.info())["last_sequence_number"]
        if last is None or number > seq_int(last):
            return False
        here = await stream.read(shard_id, seq_str(number - 1) if number > 0 else None, 1)
        if here and seq_int(here[0]["SequenceNumber"]) == number:
            return True
        oldest = await stream.read(shard_id, None, 1)
        return not oldest or seq_int(oldest[0]["SequenceNumber"]) > number

    def _iterator(self, stream: str, shard: str, after: str | None, not_before: float | None) -> str:
        state: dict[str, Any] = {"s": stream, "h": shard, "a": after, "t": self.runtime.clock.time()}
        if not_before is not None:
            state["n"] = not_before
        return _token(state)

    async def _op_GetRecords(self, body: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        token = _str(body, "ShardIterator")
        assert token is not None
        limit = _int(body, "Limit", MAX_GET_RECORDS, 1, MAX_GET_RECORDS, "InvalidArgumentException")
        state = _untoken(token, "ShardIterator")
        try:
            name, shard_id, after, issued = state["s"], state["h"], state["a"], float(state["t"])
        except (KeyError, TypeError, ValueError):
            raise _bad("ShardIterator is not valid", "InvalidArgumentException") from None
        valid_after = after is None or _is_seq(after)
        if not isinstance(name, str) or not isinstance(shard_id, str) or not valid_after:
            raise _bad("ShardIterator is not valid", "InvalidArgumentException")
        if self.runtime.clock.time() - issued > ITERATOR_TTL:
            raise AwsError(
                400, "ExpiredIteratorException", f"Iterator expired. The iterator was created at time "
                f"{issued} while right now it is {self.runtime.clock.time()} which is further in the "
                "future than the tolerated delay of 300000 milliseconds."
            )
        stream = await self.runtime.get_stream(name)
        shard = next((s for s in await stream.shards() if s["ShardId"] == shard_id), None)
        if shard is None:
            raise AwsError(400, "ResourceNotFoundException", f"Shard {shard_id} does not exist")
        # Never more than a page's worth from the store (10,000 records of 1 MiB would be
        # 13 GiB of base64): its cap is in base64 characters, a third over the page's bytes.
        # One record past the limit: whether more follow this page (MillisBehindLatest is 0
        # for a page that reaches the newest record, however full it is).
        fetched = await stream.read(shard_id, after, limit + 1, max_bytes=_READ_CAP)
        capped = sum(len(r["Data"]) + len(r["PartitionKey"]) for r in fetched) >= _READ_CAP
        read = fetched[:limit]
        not_before = state.get("n")
        stamp = not_before if isinstance(not_before, int | float) else None
        # At most 10 MiB per call, and at least one record: the page ends before the
        # record that would pass it, and the next iterator goes on after the last one
        # returned (records an AT_TIMESTAMP iterator skips count nothing, but are passed).
        records: list[dict[str, Any]] = []
        size = passed = 0
        for record in read:
            if stamp is None or record["ApproximateArrivalTimestamp"] >= stamp:
                weight = _data_size(record["Data"]) + len(record["PartitionKey"].encode())
                if records and size + weight > MAX_GET_RECORDS_BYTES:
                    break
                size += weight
                record["EncryptionType"] = "NONE"
                records.append(record)
            passed += 1
        more = passed < len(fetched) or capped
        read = read[:passed]
        if read:
            after = read[-1]["SequenceNumber"]
        out: dict[str, Any] = {"Records": records, "MillisBehindLatest": 0}
        if more:  # more may follow: how far behind the newest this page is
            newest_arrival = read[-1]["ApproximateArrivalTimestamp"]
            out["MillisBehindLatest"] = max(0, int((self.runtime.clock.time() - newest_arrival) * 1000))
        closed = _closed(shard)
        if closed and not read:  # a closed shard read to its end: no next iterator, and its children
            out["ChildShards"] = [
                {
                    "ShardId": s["ShardId"],
                    "ParentShards": [
                        p for p in (s.get("ParentShardId"), s.get("AdjacentParentShardId")) if p
                    ],
                    "HashKeyRange": s["HashKeyRange"],
                }
                for s in await stream.shards()
                if shard_id in (s.get("ParentShardId"), s.get("AdjacentParentShardId"))
            ]
        else:
            out["NextShardIterator"] = self._iterator(
                name, shard_id, after, not_before if isinstance(not_before, int | float) else None
            )
        return out


def _is_seq(value: Any) -> bool:
    try:
        seq_int(value)
    except (TypeError, ValueError):
        return False
    return True


__all__ = ["TARGET_PREFIX", "KinesisApi"]
