"""The real dccp through dcap's ssl tunnel plugin (Debian's dcap-tunnel-ssl) into a TLS door.

The plugin reads the user name and password from standard input, so each
dccp here gets them as two lines; it wraps the control connection only in
TLS, and the data connection stays plain.  dccp runs as root and says
``-uid=0``; a logged-in user's own uid and gid must decide permissions.
"""

import glob
import os
import socket
import ssl
import subprocess
import sys

import pytest

from interop_support import DCCP, Door

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tls_support import CA  # noqa: E402

from distcache.dcap.auth import PasswordFile  # noqa: E402
from distcache.dcap.errors import DcapError  # noqa: E402
from distcache.dcap.namespace import ROOT  # noqa: E402

PLUGIN = (glob.glob("/usr/lib/*/dcap/libsslTunnel.so") or [None])[0]

pytestmark = [
    pytest.mark.skipif(DCCP is None, reason="dccp is not installed (make dcap-client)"),
    pytest.mark.skipif(PLUGIN is None, reason="dcap-tunnel-ssl is not installed (make dcap-client)"),
]

UID, GID = 1234, 555


@pytest.fixture(scope="module")
def door(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("tunnel"))
    server = CA(tmp, "tunnel-ca").issue("localhost", server=True)
    passwd = os.path.join(tmp, "passwd")
    PasswordFile(passwd).set("alice", "s3cret:x", UID, GID)
    door = Door(tmp, "--tls-cert", server.cert, "--tls-key", server.key, "--passwd", passwd,
                "--anonymous-access", "READONLY")
    door.put("/public/readme.txt", b"for everyone\n")
    pool = door.storage()
    pool.namespace.mkdir("/alice", ROOT, 0o755)
    pool.namespace.chown("/alice", ROOT, UID, GID)
    yield door
    door.stop()


def tunnel_dccp(*args, login="alice\ns3cret:x\n", env=None):
    """dccp with the ssl plugin; login is what it reads from standard input."""
    full_env = dict(os.environ)
    full_env.pop("DCACHE_CLIENT_ACTIVE", None)
    full_env.update(env or {})
    p = subprocess.run([DCCP] + [str(a) for a in args], input=login, env=full_env,
                       capture_output=True, timeout=120, text=True, errors="replace")
    return p.returncode, p.stdout + p.stderr


def plugin_env():
    return {"DCACHE_IO_TUNNEL": PLUGIN}


def test_write_and_read_back_as_the_logged_in_user(door, tmp_path):
    src = tmp_path / "src"
    data = os.urandom(3 * 1024 * 1024 + 17)
    src.write_bytes(data)
    rc, out = tunnel_dccp(src, door.url("/alice/data.bin"), env=plugin_env())
    assert rc == 0, out
    entry = door.entry("/alice/data.bin")
    assert (entry.uid, entry.gid) == (UID, GID)  # not the -uid=0 dccp sends
    back = tmp_path / "back"
    rc, out = tunnel_dccp(door.url("/alice/data.bin"), back, env=plugin_env())
    assert rc == 0, out
    assert back.read_bytes() == data
    assert "user alice logged in (uid 1234, gid 555)" in door.log_text()


def test_the_ssl_url_prefix_picks_the_plugin(door, tmp_path):
    src = tmp_path / "src"
    src.write_bytes(b"by prefix\n")
    url = door.url("/alice/prefix.txt").replace("dcap://", "ssldcap://")
    rc, out = tunnel_dccp(src, url)
    assert rc == 0, out
    assert door.read("/alice/prefix.txt") == b"by prefix\n"


def test_a_logged_in_user_is_no_superuser(door, tmp_path):
    src = tmp_path / "src"
    src.write_bytes(b"x")
    rc, out = tunnel_dccp(src, door.url("/public/alice.txt"), env=plugin_env())
    assert rc != 0
    assert "client is user alice (uid 1234 gid 555)" in out


def test_a_wrong_password_is_refused(door, tmp_path):
    src = tmp_path / "src"
    src.write_bytes(b"x")
    # dccp connects again after a refusal and the plugin reads a login each time
    rc, out = tunnel_dccp(src, door.url("/alice/wrong.txt"), login="alice\nwrong\n" * 8,
                          env=plugin_env())
    assert rc != 0
    assert "login refused: user alice: wrong user name or password" in door.log_text()
    with pytest.raises(DcapError):
        door.entry("/alice/wrong.txt")


def raw_tls(door):
    """A TLS control connection without a login, as a client other than the plugin would open."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    sock = context.wrap_socket(socket.create_connection(("127.0.0.1", door.port), timeout=10))
    return sock, sock.makefile("rb")


def test_a_tls_client_without_a_login_is_anonymous(door):
    sock, lines = raw_tls(door)
    with sock:
        sock.sendall(b'0 0 client hello 0 0 2 47 14 "" -uid=1234 -pid=1 -gid=555\n')
        assert b"welcome" in lines.readline()
        sock.sendall(b"1 0 client stat dcap://h/public/readme.txt\n")
        assert b" -st_size=13 " in lines.readline()
        sock.sendall(b"2 0 client mkdir dcap://h/alice/anon -uid=1234 -gid=555\n")
        reply = lines.readline()
        assert b"failed" in reply and b"READONLY" in reply

