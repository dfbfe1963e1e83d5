"""Every metric the server exports, in one registry of its own.

Names follow Prometheus' conventions: the ``stream_proxy_`` prefix, base units
(``_seconds``, ``_bytes``), ``_total`` on counters. Every label takes few values,
fixed by the server and never by what a client sends: a route's pattern, not its
path; a method from a known list; an S3 operation from botocore's model.

Gauges say how they add up over worker processes (``livesum``: the sum over the
processes alive now), since each worker keeps its own requests and budget.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

# No ``_created`` series beside each counter and histogram: Prometheus does not use
# them, and they would double what every scrape carries.
disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY = CollectorRegistry()  # not prometheus_client's global one: only ours

# Requests last from milliseconds (a HEAD, a small listing) to hours (a large
# upload or download on a slow line): buckets from 5 ms to an hour.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
# S3 calls: from a HeadObject's milliseconds to a part's or a copy's minutes.
S3_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

HTTP_REQUESTS = Counter(
    "stream_proxy_http_requests_total",
    "HTTP requests answered, by method, route pattern and status",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "stream_proxy_http_request_duration_seconds",
    "Time from a request's head to the last byte of its answer",
    ["method", "route"],
    buckets=REQUEST_BUCKETS,
    registry=REGISTRY,
)
HTTP_RECEIVED = Counter(
    "stream_proxy_http_received_bytes_total",
    "Request body bytes read from clients",
    ["route"],
    registry=REGISTRY,
)
HTTP_SENT = Counter(
    "stream_proxy_http_sent_bytes_total",
    "Response bytes (head and body) written to clients",
    ["route"],
    registry=REGISTRY,
)
UPLOADS_IN_FLIGHT = Gauge(
    "stream_proxy_uploads_in_flight",
    "Uploads being received now: PUT, POST of files, tus creation and PATCH",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
DOWNLOADS_IN_FLIGHT = Gauge(
    "stream_proxy_downloads_in_flight",
    "Downloads (GET of an object) being answered now",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)

S3_REQUESTS = Counter(
    "stream_proxy_s3_requests_total",
    "S3 calls made through botocore, by operation (retries inside one call count once)",
    ["operation"],
    registry=REGISTRY,
)
S3_DURATION = Histogram(
    "stream_proxy_s3_request_duration_seconds",
    "Time an S3 call took, retries included, up to its answer's head",
    ["operation"],
    buckets=S3_BUCKETS,
    registry=REGISTRY,
)
S3_ERRORS = Counter(
    "stream_proxy_s3_errors_total",
    "S3 calls that failed, by operation and kind: not_found (404), precondition_failed "
    "(412), client_error (other 4xx), server_error (5xx), unreachable (no answer, timeout)",
    ["operation", "kind"],
    registry=REGISTRY,
)
S3_READS = Counter(
    "stream_proxy_s3_reads_total",
    "GetObject reads of downloads, by path: relay (spliced to the client) or botocore",
    ["path"],
    registry=REGISTRY,
)

MEMORY_BUDGET_USED = Gauge(
    "stream_proxy_memory_budget_used_bytes",
    "Memory budget held by S3 uploads: buffered (part bytes in memory) and charged "
    "(fixed cost per part on its way)",
    ["kind"],
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
MEMORY_BUDGET_LIMIT = Gauge(
    "stream_proxy_memory_budget_limit_bytes",
    "Memory budget of S3 uploads (storage.s3.memory_budget, per process)",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)

TUS_CREATED = Counter(
    "stream_proxy_tus_uploads_created_total", "Resumable uploads created", registry=REGISTRY
)
TUS_FINISHED = Counter(
    "stream_proxy_tus_uploads_finished_total",
    "Resumable uploads whose last byte arrived (now objects)",
    registry=REGISTRY,
)
TUS_TERMINATED = Counter(
    "stream_proxy_tus_uploads_terminated_total",
    "Resumable uploads removed by their client (termination)",
    registry=REGISTRY,
)
TUS_EXPIRED = Counter(
    "stream_proxy_tus_uploads_expired_total",
    "Resumable uploads removed by the sweep after expiring",
    registry=REGISTRY,
)

S3_PARTS = Counter(
    "stream_proxy_s3_parts_total",
    "Parts of multipart uploads sent to S3, by path: streamed while they filled (a tus PATCH's), "
    "or whole through botocore",
    ["path"],
    registry=REGISTRY,
)

# The children of labelled metrics that are used on every call, made once.
READS_RELAYED = S3_READS.labels("relay")
READS_BOTOCORE = S3_READS.labels("botocore")
PARTS_STREAMED = S3_PARTS.labels("streamed")
PARTS_WHOLE = S3_PARTS.labels("whole")
BUDGET_BUFFERED = MEMORY_BUDGET_USED.labels("buffered")
BUDGET_CHARGED = MEMORY_BUDGET_USED.labels("charged")
