"""What the server counts for Prometheus: the metric definitions (definitions.py),
several worker processes summed into one answer (processes.py), S3 calls measured
at the client (s3.py) and the text of the /metrics answer (exposition.py).

It sees no aiohttp request (the middleware, the handler and the per-request hook
are in proxy/web/), and uses nothing of the project, so every layer may count into
it: storage counts its S3 calls and expired uploads here.
"""
