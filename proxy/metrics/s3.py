"""S3 calls counted and timed at the client, by the operation botocore names them.

Every S3 call of the backend goes through one client object; wrapping it sees each
call's name (``head_object``), which botocore's model maps to the operation
(``HeadObject``): no call site has to say what it calls, and no name outside the
model becomes a label. A call is timed from its start to its answer's head, retries
and deadlines included; one cancelled (its request went away) is not counted.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client.metrics import Counter, Histogram

from proxy.metrics.definitions import S3_DURATION, S3_ERRORS, S3_REQUESTS

T = TypeVar("T")


class _Operation:
    """The metrics' children of one operation, made once."""

    __slots__ = ("_errors", "duration", "name", "requests")

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests: Counter = S3_REQUESTS.labels(name)
        self.duration: Histogram = S3_DURATION.labels(name)
        self._errors: dict[str, Counter] = {}

    def failed(self, kind: str) -> None:
        errors = self._errors.get(kind)
        if errors is None:
            errors = self._errors[kind] = S3_ERRORS.labels(self.name, kind)
        errors.inc()

    async def measure(self, call: Awaitable[T]) -> T:
        start = time.perf_counter()
        try:
            result = await call
        except ClientError as exc:
            self._done(start)
            self.failed(error_kind(exc))
            raise
        except (BotoCoreError, aiohttp.ClientError, OSError):  # TimeoutError is an OSError
            self._done(start)
            self.failed("unreachable")
            raise
        self._done(start)
        return result

    def _done(self, start: float) -> None:
        self.requests.inc()
        self.duration.observe(time.perf_counter() - start)


def error_kind(exc: ClientError) -> str:
    metadata = exc.response.get("ResponseMetadata", {})
    status = metadata.get("HTTPStatusCode")
    code = str(exc.response.get("Error", {}).get("Code", ""))
    if status == 404 or code in ("404", "NoSuchKey", "NotFound", "NoSuchUpload"):
        return "not_found"
    if status == 412 or code in ("412", "PreconditionFailed"):
        return "precondition_failed"
    if isinstance(status, int) and status >= 500:
        return "server_error"
    return "client_error"


class MeasuredClient:
    """An aiobotocore S3 client (or a wrapper of one) whose API calls are counted
    and timed; everything else is the client's own."""

    def __init__(self, client: Any) -> None:
        self._client = client
        # Method name -> operation name, from botocore's model of the service.
        self._names: dict[str, str] = dict(client.meta.method_to_api_mapping)
        self._operations: dict[str, _Operation] = {}

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)
        operation = self._operations.get(name)
        if operation is None:
            api_name = self._names.get(name)
            if api_name is None:
                return method  # not an API call (meta, generate_presigned_url, ...)
            operation = self._operations[name] = _Operation(api_name)
        return _measured(operation, method)


def _measured(operation: _Operation, method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    async def call(*args: Any, **kwargs: Any) -> T:
        return await operation.measure(method(*args, **kwargs))

    return call
