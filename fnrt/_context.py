"""The ``context`` object handed to a handler: Lambda's Python context, attribute for attribute."""

from __future__ import annotations

import sys
import time
from typing import Any

_new = object.__new__


class CognitoIdentity:
    __slots__ = ("cognito_identity_id", "cognito_identity_pool_id")

    @classmethod
    def from_dict(cls, data: object) -> CognitoIdentity | None:
        if not isinstance(data, dict):
            return None
        identity_id = data.get("cognito_identity_id", data.get("identity_id"))
        pool_id = data.get("cognito_identity_pool_id", data.get("pool_id"))
        return cls(
            identity_id if isinstance(identity_id, str) else None,
            pool_id if isinstance(pool_id, str) else None,
        )

    def __init__(self, identity_id: str | None = None, pool_id: str | None = None) -> None:
        self.cognito_identity_id = identity_id
        self.cognito_identity_pool_id = pool_id

    def __repr__(self) -> str:
        return (
            "CognitoIdentity(["
            f"cognito_identity_id={self.cognito_identity_id},"
            f"cognito_identity_pool_id={self.cognito_identity_pool_id}"
            "])"
        )


class Client:
    """``context.client_context.client``: the mobile app that called (Lambda's fields)."""

    __slots__ = ("app_package_name", "app_title", "app_version_code", "app_version_name", "installation_id")

    def __init__(
        self,
        installation_id: str | None = None,
        app_title: str | None = None,
        app_version_name: str | None = None,
        app_version_code: str | None = None,
        app_package_name: str | None = None,
    ) -> None:
        self.installation_id = installation_id
        self.app_title = app_title
        self.app_version_name = app_version_name
        self.app_version_code = app_version_code
        self.app_package_name = app_package_name

    def __repr__(self) -> str:
        return (
            "Client(["
            f"installation_id={self.installation_id},"
            f"app_title={self.app_title},"
            f"app_version_name={self.app_version_name},"
            f"app_version_code={self.app_version_code},"
            f"app_package_name={self.app_package_name}"
            "])"
        )


class ClientContext:
    """``context.client_context``: what the caller sent in ``X-Amz-Client-Context``.

    As in Lambda's Python runtime, ``client`` is a :class:`Client` (or ``None``),
    ``custom`` and ``env`` are the dicts sent, and other members (the mobile SDKs send
    ``services``) are ignored.
    """

    __slots__ = ("client", "custom", "env")

    def __init__(self, client: Client | None = None, custom: Any = None, env: Any = None) -> None:
        self.client = client
        self.custom = custom
        self.env = env

    def __repr__(self) -> str:
        return f"ClientContext([custom={self.custom},env={self.env},client={self.client}])"

    @classmethod
    def from_dict(cls, data: object) -> ClientContext | None:
        """Lenient, like Lambda: anything that is not an object gives ``None``; members of
        the wrong type are ``None``; nothing a caller sends can raise here."""
        if not isinstance(data, dict):
            return None
        raw_client = data.get("client")
        client = None
        if isinstance(raw_client, dict):
            client = Client(**{k: raw_client.get(k) for k in Client.__slots__})
        custom = data.get("custom")
        env = data.get("env")
        return cls(
            client,
            custom if isinstance(custom, dict) else None,
            env if isinstance(env, dict) else None,
        )


class Context:
    """What Lambda's Python runtime passes as ``context``.

    ``memory_limit_in_mb`` is a string, as in Lambda. ``get_remaining_time_in_millis()``
    counts down to the invocation's deadline and never goes below zero. As in Lambda's
    runtime (awslambdaric's ``LambdaContext``), a handler may set attributes of its own on
    it (no ``__slots__``), ``log(msg)`` writes to the invocation's log, and its ``repr``
    lists its fields.
    """

    tenant_id: str | None = None  # Lambda's tenant isolation mode: not modelled

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
        (
            self.function_name,
            self.function_version,
            self.memory_limit_in_mb,
            self.log_group_name,
            self.log_stream_name,
        ) = self.constants(function_name, memory_limit_in_mb, log_stream_name, function_version)
        self.invoked_function_arn = invoked_function_arn
        self.aws_request_id = aws_request_id
        self.identity = identity if identity is not None else CognitoIdentity()
        self.client_context = client_context
        self._deadline_ms = deadline_ms

    @classmethod
    def _for_invoke(
        cls,
        constants: tuple[str, str, str, str, str],
        aws_request_id: str,
        deadline_ms: int,
        invoked_function_arn: str,
        identity: CognitoIdentity | None,
        client_context: ClientContext | None,
    ) -> Context:
        """What ``__init__`` builds, for the sandbox's warm path: the function's own fields
        come precomputed (:meth:`constants`, once per bind), the rest are positional. A
        keyword call to ``__init__`` costs three times as much, on caches that the other
        sandboxes have just evicted."""
        self = _new(cls)
        (
            self.function_name,
            self.function_version,
            self.memory_limit_in_mb,
            self.log_group_name,
            self.log_stream_name,
        ) = constants
        self.invoked_function_arn = invoked_function_arn
        self.aws_request_id = aws_request_id
        self.identity = identity if identity is not None else CognitoIdentity()
        self.client_context = client_context
        self._deadline_ms = deadline_ms
        return self

    @staticmethod
    def constants(
        function_name: str,
        memory_limit_in_mb: int | str,
        log_stream_name: str = "",
        function_version: str = "$LATEST",
    ) -> tuple[str, str, str, str, str]:
        """The fields of a function's contexts that stay the same from call to call."""
        return (
            function_name,
            function_version,
            str(memory_limit_in_mb),
            f"/aws/lambda/{function_name}",
            log_stream_name,
        )

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self._deadline_ms - int(time.time() * 1000))

    def log(self, msg: object) -> None:
        """Write ``str(msg)`` to the invocation's log, as ``print`` would (no newline added)."""
        sys.stdout.write(str(msg))

    def __repr__(self) -> str:
        return (
            "LambdaContext(["
            f"aws_request_id={self.aws_request_id},"
            f"log_group_name={self.log_group_name},"
            f"log_stream_name={self.log_stream_name},"
            f"function_name={self.function_name},"
            f"memory_limit_in_mb={self.memory_limit_in_mb},"
            f"function_version={self.function_version},"
            f"invoked_function_arn={self.invoked_function_arn},"
            f"client_context={self.client_context},"
            f"identity={self.identity},"
            f"tenant_id={self.tenant_id}"
            "])"
        )
