"""The README's `make run` deployment (conf/local.tac) comes up and serves real clients."""

import os
import signal
import subprocess
import sys
from pathlib import Path

from polling import wait_until

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "interop"))

from interop_support import free_low_port  # noqa: E402


def test_local_tac_serves_distcache_and_dcap(tmp_path):
    port = free_low_port()
    env = dict(os.environ, DCAP_LISTEN=f"tcp:{port}:interface=127.0.0.1",
               PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--nodaemon",
         "--pidfile=", "-y", str(ROOT / "conf" / "local.tac")],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_until(lambda: (tmp_path / "var" / "scache").exists()
                        and (tmp_path / "var" / "dc_server.sock").exists(), 20)
        # dc_test through the local dc_client, which forwards to the local dc_server
        test = subprocess.run([sys.executable, "-m", "distcache.loadtest", "-connect",
                               f"UNIX:{tmp_path}/var/scache", "-sessions", "10", "-ops", "300"],
                              env=env, capture_output=True, text=True, timeout=60)
        assert test.returncode == 0, test.stdout + test.stderr
        # the real dccp writes into the door and reads the file back
        src = tmp_path / "hello.txt"
        src.write_bytes(b"hello from the local deployment\n")
        url = f"dcap://127.0.0.1:{port}/hello.txt"
        assert wait_until(lambda: subprocess.run(["dccp", str(src), url],
                                               capture_output=True).returncode == 0, 20)
        back = tmp_path / "back.txt"
        subprocess.run(["dccp", url, str(back)], check=True, capture_output=True, timeout=30)
        assert back.read_bytes() == src.read_bytes()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert "Info, total operations =" in out
