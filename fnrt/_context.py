"""The ``context`` object handed to a handler: Lambda's Python context, attribute for attribute."""

from __future__ import annotations

import time
from typing import Any


class CognitoIdentity:
    __slots__ = ("cognito_identity_id", "cognito_identity_pool_id")

    def __init__(self, identity_id: str | None = None, pool_id: str | None = None) -> None:
        self.cognito_identity_id = identity_id
        self.cognito_identity_pool_id = pool_id


class ClientContext:
    __slots__ = ("client", "custom", "env")

    def __init__(self, client: Any = None, custom: Any = None, env: Any = None) -> None:
        self.client = client
        self.custom = custom
        self.env = env


class Context:
    """What Lambda's Python runtime passes as ``context``.

    ``memory_limit_in_mb`` is a string, as in Lambda. ``get_remaining_time_in_millis()``
    counts down to the invocation's deadline and never goes below zero.
    """

    __slots__ = (
        "_deadline_ms",
        "aws_request_id",
        "client_context",
        "function_name",
        "function_version",
        "identity",
        "invoked_function_arn",
        "log_group_name",
        "log_stream_name",
        "memory_limit_in_mb",
    )

    def __init__(
        self,
        *,
        function_name: str,
        invoked_function_arn: str,
        memory_limit_in_mb: int | str,
        aws_request_id: str,
        deadline_ms: int,
        log_stream_name: str = "",
        function_version: str = "$LATEST",
        identity: CognitoIdentity | None = None,
        client_context: ClientContext | None = None,
    ) -> None:
        self.function_name = function_name
        self.function_version = function_version
        self.invoked_function_arn = invoked_function_arn
        self.memory_limit_in_mb = str(memory_limit_in_mb)
        self.aws_request_id = aws_request_id
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = log_stream_name
        self.identity = identity if identity is not None else CognitoIdentity()
        self.client_context = client_context
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self._deadline_ms - int(time.time() * 1000))

    def __repr__(self) -> str:
        return f"<Context function_name={self.function_name!r} aws_request_id={self.aws_request_id!r}>"
