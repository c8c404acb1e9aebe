"""Debian's Apache httpd with mod_ssl and mod_socache_memcache, made at test time.

Each instance gets its own ServerRoot, pid file, port, certificate and logs in a
temporary directory, runs in the foreground as a child process (started as root, its
workers as ``nobody``), and keeps its TLS sessions in memcache at the address given.
Session tickets are off, so resumption goes through that cache; the server allows
TLS 1.2 and 1.3, and the ``openssl s_client`` checks ask for TLS 1.2.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from typing import Optional

import pytest

MODULES = "/usr/lib/apache2/modules"

CONFIG = """\
ServerRoot "{root}"
PidFile "{root}/httpd.pid"
DefaultRuntimeDir "{root}/run"
Mutex file:{root}/run default
ServerName localhost
Listen 127.0.0.1:{port}
User nobody
Group nogroup
LoadModule mpm_event_module {modules}/mod_mpm_event.so
LoadModule authz_core_module {modules}/mod_authz_core.so
LoadModule socache_memcache_module {modules}/mod_socache_memcache.so
LoadModule ssl_module {modules}/mod_ssl.so
ErrorLog "{root}/error.log"
LogLevel warn ssl:info socache_memcache:debug
DocumentRoot "{root}/htdocs"
<Directory "{root}/htdocs">
    Require all granted
</Directory>
SSLSessionCache memcache:{memcache}
SSLSessionCacheTimeout 300
SSLEngine on
SSLProtocol -all +TLSv1.2 +TLSv1.3
SSLSessionTickets off
SSLCertificateFile "{root}/server.crt"
SSLCertificateKeyFile "{root}/server.key"
"""


def need_apache() -> None:
    if shutil.which("apache2") is None or not os.path.exists(f"{MODULES}/mod_ssl.so"):
        pytest.skip("Debian's apache2 (with mod_ssl and mod_socache_memcache) is not installed")
    if not os.path.exists(f"{MODULES}/mod_socache_memcache.so"):
        pytest.skip("apache2 has no mod_socache_memcache")
    if os.geteuid() != 0:
        pytest.skip("apache2 instances are started as root (they drop to nobody)")
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")


def make_certificate(directory: str) -> None:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-keyout", os.path.join(directory, "server.key"),
                    "-out", os.path.join(directory, "server.crt")],
                   check=True, capture_output=True, timeout=60)


class Apache:
    """One ``apache2 -f CONF -DFOREGROUND`` instance."""

    def __init__(self, root: str, port: int, memcache: str):
        self.root = root
        self.port = port
        self.memcache = memcache
        self.process: Optional[subprocess.Popen] = None

    def start(self) -> "Apache":
        root = self.root
        os.makedirs(os.path.join(root, "htdocs"), exist_ok=True)
        os.makedirs(os.path.join(root, "run"), exist_ok=True)
        os.chmod(root, 0o755)
        with open(os.path.join(root, "htdocs", "index.html"), "w") as f:
            f.write("served\n")
        make_certificate(root)
        conf = os.path.join(root, "httpd.conf")
        with open(conf, "w") as f:
            f.write(CONFIG.format(root=root, port=self.port, modules=MODULES,
                                  memcache=self.memcache))
        check = subprocess.run(["apache2", "-f", conf, "-t"], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        self.process = subprocess.Popen(["apache2", "-f", conf, "-DFOREGROUND"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"apache2 did not start: {self.log()}")
                time.sleep(0.05)

    def log(self) -> str:
        try:
            with open(os.path.join(self.root, "error.log")) as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
            self.process = None


def handshake(port: int, sess_out: Optional[str] = None, sess_in: Optional[str] = None,
              extra=()) -> str:
    """One TLS 1.2 handshake and an HTTP request with ``openssl s_client``; "New" or "Reused"."""
    args = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_2", "-no_ticket",
            "-servername", "localhost", "-ign_eof", *extra]
    if sess_out:
        args += ["-sess_out", sess_out]
    if sess_in:
        args += ["-sess_in", sess_in]
    request = b"GET /index.html HTTP/1.0\r\nHost: localhost\r\n\r\n"
    done = subprocess.run(args, input=request, capture_output=True, timeout=30)
    out = done.stdout.decode("latin-1")
    assert done.returncode == 0, out + done.stderr.decode("latin-1")
    assert "served" in out, "the page was not served:\n" + out
    for line in out.splitlines():
        if line.startswith(("New, ", "Reused, ")):
            return line.split(",")[0]
    raise AssertionError("s_client printed no New/Reused line:\n" + out)
