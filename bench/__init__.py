"""Benchmarks of stream-proxy against references, run by ``make bench``.

``python -m bench`` starts (or reuses) the real S3 server from ../shared/s3, starts
the proxy as separate processes, runs every measurement in
:data:`bench.run.ALL` (those of :mod:`bench.measurements`: its upload rows, the
download rows of :mod:`bench.download_rows` and the concurrent RSS row of
:mod:`bench.memory`; then ``auth_cost`` of :mod:`bench.auth`, ...) and prints one
table of the results. What every measurement shares is in :mod:`bench.context`.

Environment:

- ``STREAM_PROXY_BENCH_S3``: endpoint URL of a running S3 server to use instead of
  starting one (``http://127.0.0.1:7480``).
- ``S3_ACCESS_KEY``/``S3_SECRET_KEY``/``S3_REGION``: its credentials (default
  testaccesskey/testsecretkey/us-east-1, what ../shared/s3 creates).
- ``BENCH_SIZE_MIB`` (512): upload size of the upload throughput measurements.
- ``BENCH_ROUNDS`` (5): rounds of each throughput and latency measurement, alternating
  which side goes first; medians are reported, and a throughput ratio is the median
  of the rounds' own ratios.
- ``BENCH_RSS_SIZES_MIB`` (200,1024): upload sizes of the peak RSS measurement.
- ``BENCH_WARMUP_MIB`` (32): one untimed upload (or ranged download) of this size per
  path first; 0 = none.
- ``BENCH_DOWNLOAD_MIB`` (1024): size of the object the download measurements read;
  the range requests (1 MiB each) start at random offsets inside it.
- ``BENCH_RANGE_COUNT`` (200): range requests per side and round of the latency
  measurements; median and p99 are reported.
- ``BENCH_TUS_MIB`` (500) and ``BENCH_TUS_CHUNK_MIB`` (8): size of the resumable (tus)
  upload and of each of its PATCHes, timed beside one PUT of the same size.
- ``BENCH_CONCURRENT_UPLOADS`` (100) and ``BENCH_CONCURRENT_MIB`` (24): the S3
  uploads sent at once whose peak proxy RSS is held against the memory budget;
  ``BENCH_CONCURRENT_BUDGETS_MIB`` (256,64): the storage.s3.memory_budget of each run
  (a fresh proxy each); ``BENCH_CONCURRENT_CHUNKED`` (1): add a run with chunked
  bodies (no Content-Length) at the first budget, 0 = not.
- ``BENCH_ONLY``: comma-separated measurement names to run (default: all).
"""
