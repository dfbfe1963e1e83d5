"""deploy/nginx/stream-proxy.conf is accepted by ``nginx -t`` inside Debian's stock
nginx.conf (its http block includes the file where it includes conf.d/*.conf), with
the paths that need root (pid, logs, temporary files) pointed at a temporary
directory, so that no root is needed; and it says what the deployment needs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.conftest import require
from tests.deploy.conftest import NGINX, SHIPPED, TEMP_PATHS, require_nginx

STOCK = Path("/etc/nginx/nginx.conf")


def stock_with_shipped(directory: Path) -> Path:
    """Debian's nginx.conf, including the shipped file, its paths under ``directory``."""
    text = STOCK.read_text()
    replaced = []
    for pattern, replacement in [
        (r"^pid .*;$", f"pid {directory / 'nginx.pid'};"),
        (r"^error_log .*;$", f"error_log {directory / 'error.log'};"),
        (r"^(\s*)access_log .*;$", rf"\g<1>access_log {directory / 'access.log'};"),
        # Dynamic modules are the machine's affair, not the file's (their paths are
        # relative to the prefix, which is the temporary directory here).
        (r"^include /etc/nginx/modules-enabled/\*\.conf;$", ""),
        (r"^(\s*)include /etc/nginx/conf\.d/\*\.conf;$", rf"\g<1>include {SHIPPED};"),
    ]:
        text, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
        replaced.append(count)
    assert replaced[-1] == 1, f"{STOCK} has no 'include /etc/nginx/conf.d/*.conf;' in its http block"
    temp = "".join(f"\t{name}_temp_path {directory / ('temp-' + name)};\n" for name in TEMP_PATHS)
    text = re.sub(r"^http \{\n", "http {\n" + temp, text, count=1, flags=re.MULTILINE)
    conf = directory / "nginx.conf"
    conf.write_text(text)
    return conf


def test_nginx_accepts_the_shipped_file_in_debians_http_block(tmp_path: Path) -> None:
    require_nginx()
    require(STOCK.exists(), f"{STOCK} is missing (Debian's nginx-common package)")
    conf = stock_with_shipped(tmp_path)
    result = subprocess.run(
        [str(NGINX), "-t", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "test is successful" in output, output
    # Warnings are mistakes too (a conflicting server name, a directive ignored),
    # except the one about `user` that a run without root always gets.
    warnings = [line for line in output.splitlines() if "[warn]" in line and '"user" directive' not in line]
    assert not warnings, output


def test_shipped_file_streams_and_never_retries_non_idempotent_requests() -> None:
    text = SHIPPED.read_text()
    directives = {
        re.sub(r"\s+", " ", line.split("#", 1)[0].strip().rstrip(";"))
        for line in text.splitlines()
        if line.split("#", 1)[0].strip()
    }
    for wanted in [
        "proxy_http_version 1.1",
        'proxy_set_header Connection ""',
        "proxy_request_buffering off",
        "proxy_buffering off",
        "client_max_body_size 0",
        "proxy_next_upstream error timeout",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for",
        "proxy_set_header X-Forwarded-Proto $scheme",
        "proxy_set_header X-Request-ID $request_id",
    ]:
        assert wanted in directives, wanted
    assert "non_idempotent" not in " ".join(directives)
    assert any(d.startswith("keepalive ") for d in directives)
