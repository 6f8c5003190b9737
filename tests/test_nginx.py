"""examples/nginx.conf for real: nginx terminates TLS in front of `receiver serve`.

The provider signs ``https://hooks.example.com/sms``; receiver only sees
``http://127.0.0.1:<port>/sms`` and must rebuild the signed URL from the forwarded
headers nginx sets (no ``public_url``), so a 200 proves the example's headers and the
receiver's trusted-proxy handling fit together.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx2
from serving import free_port, serve

from receiver.testing import sign_onepoint

EXAMPLE = Path(__file__).parent.parent / "examples" / "nginx.conf"
SECRET = "nginx-test-secret"
CONFIG = f"""
[channels.sms]
provider = "onepoint"
auth = "hmac"
credentials = {{ nginx-app = "{SECRET}" }}
"""


def sign(url: str, body: bytes) -> str:
    return sign_onepoint("POST", url, body, app_id="nginx-app", secret=SECRET)


def nginx_config(tmp_path: Path, http_port: int, https_port: int, upstream: int) -> Path:
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=hooks.example.com",
            "-keyout",
            str(tmp_path / "key.pem"),
            "-out",
            str(tmp_path / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    text = EXAMPLE.read_text()
    text = re.sub(r"listen \[::\]:\d+[^;]*;", "", text)  # loopback IPv4 is enough here
    text = text.replace("listen 80;", f"listen 127.0.0.1:{http_port};")
    text = text.replace("listen 443 ssl http2;", f"listen 127.0.0.1:{https_port} ssl http2;")
    text = text.replace("server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream};")
    text = re.sub(r"ssl_certificate\s+\S+;", f"ssl_certificate {tmp_path / 'cert.pem'};", text)
    text = re.sub(
        r"ssl_certificate_key\s+\S+;", f"ssl_certificate_key {tmp_path / 'key.pem'};", text
    )
    text = text.replace("/var/log/nginx/receiver.access.log", str(tmp_path / "access.log"))
    text = text.replace(
        "events {}",
        f"pid {tmp_path / 'nginx.pid'};\nerror_log {tmp_path / 'error.log'};\nevents {{}}",
    )
    temp = (
        f"\n    client_body_temp_path {tmp_path / 'body'};"
        f"\n    proxy_temp_path {tmp_path / 'proxy'};"
    )
    text = text.replace("http {", "http {" + temp, 1)
    path = tmp_path / "nginx.conf"
    path.write_text(text)
    return path


def test_nginx_example_passes_the_headers_receiver_trusts(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    assert Path(nginx).exists(), "nginx is not installed: `make test` installs it"
    body = json.dumps(
        {
            "Type": "Receipt",
            "Status": "Delivered",
            "MessageID": "MS-NGINX-1",
            "Destination": "447700900123",
            "Timestamp": "2026-11-22T10:00:00+00:00",
        }
    ).encode()
    with serve(tmp_path, CONFIG) as server:
        upstream = int(server.base.rsplit(":", 1)[1])
        http_port, https_port = free_port(), free_port()
        config = nginx_config(tmp_path, http_port, https_port, upstream)
        checked = subprocess.run([nginx, "-t", "-c", str(config)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr
        proxy = subprocess.Popen([nginx, "-c", str(config), "-g", "daemon off;"])
        try:
            with httpx2.Client(verify=False, timeout=10) as client:
                url = f"https://127.0.0.1:{https_port}/sms"
                host = {"Host": "hooks.example.com", "Content-Type": "application/json"}
                for _ in range(100):  # nginx is up when it answers
                    try:
                        client.get(f"https://127.0.0.1:{https_port}/healthz", headers=host)
                        break
                    except httpx2.TransportError:
                        time.sleep(0.05)
                signed_public = client.post(
                    url,
                    content=body,
                    headers={**host, "Authorization": sign("https://hooks.example.com/sms", body)},
                )
                signed_internal = client.post(
                    url,
                    content=body,
                    headers={
                        **host,
                        "Authorization": sign(f"http://127.0.0.1:{upstream}/sms", body),
                    },
                )
                client.get(
                    f"https://127.0.0.1:{https_port}/healthz?auth=key-in-query", headers=host
                )
                redirect = httpx2.post(
                    f"http://127.0.0.1:{http_port}/sms", content=body, headers=host
                )
        finally:
            proxy.terminate()
            proxy.wait(timeout=10)
    assert signed_public.status_code == 200, signed_public.text
    assert signed_internal.status_code == 401
    assert signed_public.headers["x-request-id"]
    assert redirect.status_code == 301
    callbacks = [e for e in server.log_events() if e["event"] == "callback"]
    assert callbacks[0]["status"] == 200 and callbacks[0]["client"] == "127.0.0.1"
    access = (tmp_path / "access.log").read_text()
    assert '"POST /sms" 200' in access
    assert "key-in-query" not in access
