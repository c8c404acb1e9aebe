"""What dccp cannot be made to do, driven by a raw DCAP client against a door process."""

import os
import re
import struct
import time
import zlib

from distcache.dcap import mover_codec as mc
from distcache.dcap.errors import NotFound
from distcache.dcap.namespace import ROOT

from interop_support import TRUST_LOCAL
from rawclient import ControlClient, DataClient
from polling import wait_until


def _gone(door, path):
    try:
        door.entry(path)
    except NotFound:
        return True
    return False


def _closed_by_peer(sock):
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_close_with_a_wrong_adler32_fails_and_stores_nothing(door):
    door.storage().namespace.mkdir("/sum", ROOT, 0o777) if _gone(door, "/sum") else None
    c = ControlClient(door.port)
    url = door.url("/sum/bad")
    line = c.ask('2 0 client open "%s" w -mode=0644 -truncate -passive localhost 0 -uid=0' % url)
    d = DataClient(line, 2)
    payload = b"checksummed payload"
    d.send(mc.encode_write())
    assert d.reply()[:3] == (mc.ACK, mc.WRITE, 0)
    d.send(mc.encode_data(payload))
    assert d.reply()[:3] == (mc.FIN, mc.WRITE, 0)
    d.send(mc.encode_close(zlib.adler32(payload) ^ 1))
    kind, cmd, rc, rest = d.reply()
    assert (kind, cmd) == (mc.ACK, mc.CLOSE) and rc != 0
    assert b"Checksum mismatch" in rest
    assert re.match(r'2 0 client failed \d+ "Checksum mismatch', c.line())
    assert _gone(door, "/sum/bad")
    c.close()


def test_the_unlinks_after_a_failed_overwrite_keep_the_earlier_version(door):
    door.put("/sum/kept", b"earlier version")
    c = ControlClient(door.port)
    line = c.ask('2 0 client open "%s" w -truncate -passive localhost 0 -uid=0'
                 % door.url("/sum/kept"))
    d = DataClient(line, 2)
    d.send(mc.encode_write() + mc.encode_data(b"new data"))
    assert d.reply()[:3] == (mc.ACK, mc.WRITE, 0)
    assert d.reply()[:3] == (mc.FIN, mc.WRITE, 0)
    d.send(mc.encode_close(zlib.adler32(b"new data") ^ 1))
    assert d.reply()[:2] == (mc.ACK, mc.CLOSE)
    assert c.line().startswith('2 0 client failed ')
    # dccp's clean-up, twice, on the connection whose write failed: nothing is removed
    assert c.ask('3 0 client unlink "%s" -uid=0' % door.url("/sum/kept")) == "3 0 client ok"
    assert c.ask('4 0 client unlink "%s" -uid=0' % door.url("/sum/kept")) == "4 0 client ok"
    assert door.read("/sum/kept") == b"earlier version"
    # another connection's unlink is a user's: it removes the file
    other = ControlClient(door.port)
    assert other.ask('1 0 client unlink "%s" -uid=0' % door.url("/sum/kept")) == "1 0 client ok"
    assert _gone(door, "/sum/kept")
    other.close()
    c.close()


def test_a_new_open_ends_the_clean_up_window_of_a_failed_write(door):
    door.put("/sum/again", b"earlier version")
    c = ControlClient(door.port)
    url = door.url("/sum/again")
    line = c.ask('2 0 client open "%s" w -truncate -passive localhost 0 -uid=0' % url)
    d = DataClient(line, 2)
    d.send(mc.encode_write() + mc.encode_data(b"x"))
    assert d.reply()[:3] == (mc.ACK, mc.WRITE, 0)
    assert d.reply()[:3] == (mc.FIN, mc.WRITE, 0)
    d.send(mc.encode_close(zlib.adler32(b"x") ^ 1))
    assert d.reply()[:2] == (mc.ACK, mc.CLOSE)
    assert c.line().startswith('2 0 client failed ')
    line = c.ask('3 0 client open "%s" r -passive localhost 0 -uid=0' % url)
    DataClient(line, 3).sock.close()
    assert c.line().startswith("3 0 client ")
    assert c.ask('4 0 client unlink "%s" -uid=0' % url) == "4 0 client ok"
    assert _gone(door, "/sum/again")
    c.close()


def test_close_with_the_right_adler32_stores_the_file(door):
    c = ControlClient(door.port)
    line = c.ask('3 0 client open "%s" w -mode=0644 -passive localhost 0 -uid=0' % door.url("/good"))
    d = DataClient(line, 3)
    payload = os.urandom(300000)
    d.send(mc.encode_write() + mc.encode_data(payload, block=65536))
    assert d.reply()[:3] == (mc.ACK, mc.WRITE, 0)
    assert d.reply()[:3] == (mc.FIN, mc.WRITE, 0)
    d.send(mc.encode_close(zlib.adler32(payload)))
    assert d.reply()[:3] == (mc.ACK, mc.CLOSE, 0)
    assert c.line() == "3 0 client ok"
    assert door.read("/good") == payload
    c.close()


def test_control_eof_discards_a_partial_write_and_keeps_the_old_version(door):
    door.put("/eof/file", b"the earlier version")
    c = ControlClient(door.port)
    line = c.ask('2 0 client open "%s" w -truncate -passive localhost 0 -uid=0' % door.url("/eof/file"))
    d = DataClient(line, 2)
    d.send(mc.encode_write())
    assert d.reply()[:3] == (mc.ACK, mc.WRITE, 0)
    d.send(mc.DATA_HEADER + struct.pack(">i", 10) + b"half")
    c.close()
    assert _closed_by_peer(d.sock)
    assert door.read("/eof/file") == b"the earlier version"
    incoming = os.path.join(door.root, "pool", "incoming")
    assert wait_until(lambda: os.listdir(incoming) == [], timeout=5.0)


def test_wrong_challenge_or_session_is_closed_and_logged(door):
    door.put("/ch/x", b"guarded")
    c = ControlClient(door.port)
    line = c.ask('5 0 client open "%s" r -passive localhost 0 -uid=0' % door.url("/ch/x"))
    words = line.split()
    good = words[6]
    for sid, challenge in ((5, "x" * len(good)), (6, good)):
        d = DataClient(line.replace(good, challenge), sid)
        assert d.sock.recv(100) == b""
    assert door.log_text().count("refused: wrong session id") >= 2
    d = DataClient(line, 5)
    d.send(mc.encode_read(100) + mc.encode_close())
    assert d.reply()[:3] == (mc.ACK, mc.READ, 0)
    assert d.data() == b"guarded"
    assert d.reply()[:3] == (mc.FIN, mc.READ, 0)
    assert d.reply()[:3] == (mc.ACK, mc.CLOSE, 0)
    assert c.line() == "5 0 client ok"
    try:
        again = DataClient(line, 5)
    except ConnectionRefusedError:
        pass  # the single-use listener is gone
    else:
        assert _closed_by_peer(again.sock)
    c.close()


def test_several_sessions_on_one_connection(door):
    door.put("/multi/a", b"A" * 1000)
    c = ControlClient(door.port)
    line = c.ask('1 0 client open "%s" r -passive localhost 0 -uid=0' % door.url("/multi/a"))
    d = DataClient(line, 1)
    stat = c.ask('2 0 client stat "%s" -uid=0' % door.url("/multi/a"))
    assert stat.startswith("2 0 client stat -st_size=1000 ")
    assert c.ask("3 2 client ping") == "3 2 server pong"
    assert c.ask('1 0 client stat "%s" -uid=0' % door.url("/multi/a")) == \
        '1 0 client failed 5 "internalError : Duplicated session id"'
    d.send(mc.encode_seek_and_read(10, mc.SEEK_SET, 5) + mc.encode_close())
    assert d.reply()[:3] == (mc.ACK, mc.SEEK_AND_READ, 0)
    assert d.data() == b"AAAAA"
    assert d.reply()[:3] == (mc.FIN, mc.SEEK_AND_READ, 0)
    assert d.reply()[:3] == (mc.ACK, mc.CLOSE, 0)
    assert c.line() == "1 0 client ok"
    c.close()


def test_opendir_lists_over_a_data_channel(door):
    door.put("/ls/dir/sub/x", b"")
    door.put("/ls/dir/file", b"12345")
    c = ControlClient(door.port)
    line = c.ask('4 0 client opendir "%s" localhost 1234 -uid=0' % door.url("/ls/dir"))
    d = DataClient(line, 4)
    d.send(mc.encode_read(1 << 20))
    assert d.reply()[:3] == (mc.ACK, mc.READ, 0)
    text = d.data()
    assert d.reply()[:3] == (mc.FIN, mc.READ, 0)
    lines = text.decode("ascii").splitlines()
    assert [l.split(":")[1:] for l in lines] == [["f", "5", "file"], ["d", "0", "sub"]]
    assert all(re.fullmatch(r"[0-9A-F]{36}", l.split(":")[0]) for l in lines)
    d.send(mc.encode_read(1 << 20))
    assert d.reply()[:3] == (mc.ACK, mc.READ, 0)
    assert d.data() == b""
    d.close()
    assert c.ask('5 0 client opendir "%s" localhost 1234 -uid=0' % door.url("/ls/dir/file")) == \
        '5 0 client failed 22 "/ls/dir/file is not a directory" ENOTDIR'
    assert c.ask('6 0 client opendir "%s" localhost 1234 -uid=0' % door.url("/ls/nope")) == \
        '6 0 client failed 10001 "No such file or directory" ENOENT'
    c.close()


def test_bad_lines_and_unknown_commands(door):
    c = ControlClient(door.port)
    assert c.ask("7 0 client frobnicate x") == \
        "7 0 client failed 669 \"protocolViolation : Invalid command 'frobnicate'\""
    assert c.ask("not a line").startswith("protocol violation: ")
    assert c.line() == ""
    c.close()


def test_large_read_to_a_slow_reader_arrives_whole(door):
    payload = os.urandom(6 * (1 << 20) + 123)
    door.put("/slow/big", payload)
    c = ControlClient(door.port)
    line = c.ask('1 0 client open "%s" r -passive localhost 0 -uid=0' % door.url("/slow/big"))
    d = DataClient(line, 1)
    d.send(mc.encode_read(len(payload)) + mc.encode_close())
    time.sleep(0.3)  # let the mover fill the socket buffers and wait for room
    assert d.reply()[:3] == (mc.ACK, mc.READ, 0)
    assert d.data() == payload
    assert d.reply()[:3] == (mc.FIN, mc.READ, 0)
    assert d.reply()[:3] == (mc.ACK, mc.CLOSE, 0)
    assert c.line() == "1 0 client ok"
    c.close()


def test_client_death_during_a_blocked_read_leaves_the_door_serving(door):
    payload = os.urandom(32 * (1 << 20))
    door.put("/slow/dead", payload)
    c = ControlClient(door.port)
    line = c.ask('1 0 client open "%s" r -passive localhost 0 -uid=0' % door.url("/slow/dead"))
    d = DataClient(line, 1)
    d.send(mc.encode_read(len(payload)))
    time.sleep(0.2)
    c.close()
    assert _closed_by_peer_after_draining(d.sock)
    again = ControlClient(door.port)
    assert again.ask('2 0 client stat "%s" -uid=0' % door.url("/slow/dead")).startswith(
        "2 0 client stat -st_size=%d " % len(payload))
    again.close()


def _closed_by_peer_after_draining(sock):
    total = 0
    try:
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            total += len(chunk)
    except ConnectionResetError:
        pass
    return total < 32 * (1 << 20)


def test_a_client_claiming_uid_0_is_anonymous_on_a_door_that_trusts_nobody(doors):
    door = doors("--anonymous-access", "FULL")  # no --trust-client-uid: the default
    door.storage().namespace.mkdir("/private", ROOT, 0o755) if _gone(door, "/private") else None
    door.put("/private/mine", b"secret", mode=0o600)
    door.storage().namespace.chown("/private/mine", ROOT, 1000, 1000)
    c = ControlClient(door.port, uid=0, gid=0)
    try:
        line = c.ask('1 0 client open "%s" r -passive localhost 0 -uid=0' % door.url("/private/mine"))
        assert line.startswith('1 0 client failed 19 "Permission denied: /private/mine is 0600')
        assert "client is anonymous" in line
        assert c.ask('2 0 client unlink "%s" -uid=0' % door.url("/private/mine")).endswith("EACCES")
    finally:
        c.close()
    assert door.read("/private/mine") == b"secret"
    assert "all anonymous (no --trust-client-uid)" in door.log_text()


def _listen_pair():
    """Listening sockets on 127.0.0.1 and 127.0.0.2 with one port number."""
    import socket
    for _ in range(20):
        a = socket.socket()
        a.bind(("127.0.0.1", 0))
        port = a.getsockname()[1]
        b = socket.socket()
        try:
            b.bind(("127.0.0.2", port))
        except OSError:
            a.close()
            b.close()
            continue
        a.listen(1)
        b.listen(1)
        return a, b, port
    raise RuntimeError("no port free on both 127.0.0.1 and 127.0.0.2")


def test_connect_back_reaches_only_the_control_peer_whatever_host_is_named(doors):
    door = doors(*TRUST_LOCAL, "--anonymous-access", "FULL", "--connect-back")
    door.put("/bounce/f", b"file data")
    mine, third, port = _listen_pair()
    c = ControlClient(door.port)
    try:
        c.send('1 0 client open "%s" r 127.0.0.2 %d -uid=0' % (door.url("/bounce/f"), port))
        mine.settimeout(10)
        data, _ = mine.accept()  # the door came to the control connection's own address
        assert struct.unpack(">ii", data.recv(8)) == (1, 0)  # session id, then 0
        third.setblocking(False)
        try:
            third.accept()
            raise AssertionError("the door connected to the host the client named")
        except BlockingIOError:
            pass
        data.close()
    finally:
        c.close()
        mine.close()
        third.close()
    assert "client named 127.0.0.2 for its callback" in door.log_text()
