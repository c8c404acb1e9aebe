"""The door's control protocol on a StringTransport, over a real namespace in tmp."""

import struct
import zlib

import pytest
from twisted.python.failure import Failure
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from distcache.dcap.door import DoorFactory
from distcache.dcap.doorconfig import DoorConfig, parse_version_range
from distcache.dcap.namespace import Access, ROOT
from distcache.dcap.pool import open_pool

HELLO = b'0 0 client hello 0 0 2 47 14 "" -uid=%d -pid=1 -gid=%d\n'


@pytest.fixture
def pool(tmp_path):
    p = open_pool(str(tmp_path / "root"), fsync=False)
    yield p
    p.namespace.close()


#: The peer of every test client, in the network the tests' doors trust.
PEER = IPv4Address("TCP", "127.0.0.1", 40000)


class Client:
    """A control connection; its uid is believed (trust_client_uid 127.0.0.0/8) unless told."""

    def __init__(self, pool, uid=0, gid=0, hello=True, peer=PEER, **config):
        config.setdefault("trust_client_uid", ("127.0.0.0/8",))
        self.factory = DoorFactory(pool, DoorConfig(**config), MemoryReactorClock())
        self.proto = self.factory.buildProtocol(None)
        self.transport = StringTransport(peerAddress=peer)
        self.proto.makeConnection(self.transport)
        if hello:
            assert self.send(HELLO % (uid, gid)) == ["0 0 server welcome 2 47"]

    def send(self, data):
        self.transport.clear()
        self.proto.dataReceived(data)
        return self.transport.value().decode("ascii").splitlines()

    def ask(self, line):
        out = self.send(line.encode("ascii") + b"\n")
        assert len(out) == 1, out
        return out[0]


def url(path):
    return "dcap://127.0.0.1:22125/" + path.lstrip("/")


def put(pool, path, data=b"", mode=0o644, uid=0, gid=0):
    up = pool.open_write(path, ROOT, mode, replace=True)
    up.file.write(data)
    up.commit()
    if uid or gid:
        pool.namespace.chown(path, ROOT, uid, gid)


def test_stat_of_file_and_directory(pool):
    pool.namespace.mkdir("/pnfs", ROOT, 0o755)
    put(pool, "/pnfs/x", b"x" * 17000)
    c = Client(pool, access=Access.FULL)
    line = c.ask('1 0 client stat "%s" -uid=0' % url("//pnfs/x"))
    assert line.startswith("1 0 client stat -st_size=17000 -st_uid=0 -st_gid=0 -st_atime=")
    assert "-st_mode=-rw-r--r--" in line
    assert "-st_ino=" in line
    assert "-st_mode=drwxr-xr-x" in c.ask('2 0 client lstat "%s" -uid=0' % url("/pnfs"))
    assert c.ask('3 0 client stat "%s" -uid=0' % url("/nothere")) == \
        '3 0 client failed 10001 "No such file or directory" ENOENT'


def test_namespace_requests_with_the_real_doors_replies(pool):
    c = Client(pool, access=Access.FULL)
    assert c.ask('1 0 client mkdir "%s" -mode=493 -uid=0' % url("/d")) == "1 0 client ok"
    assert "-st_mode=drwxr-xr-x" in c.ask('2 0 client stat "%s" -uid=0' % url("/d"))
    assert c.ask('3 0 client mkdir "%s" -mode=493 -uid=0' % url("/d")) == \
        '3 0 client failed 20 "Directory exists" EEXIST'
    assert c.ask('4 0 client mkdir "%s" -mode=493 -uid=0' % url("/x/y")) == \
        '4 0 client failed 10001 "Path /x does not exist"'
    put(pool, "/d/f", b"abc")
    assert c.ask('5 0 client chmod "%s" -mode=384 -uid=0' % url("/d/f")) == "5 0 client ok"
    assert "-st_mode=-rw-------" in c.ask('6 0 client stat "%s" -uid=0' % url("/d/f"))
    assert c.ask('7 0 client chown "%s" -owner=12:34 -uid=0' % url("/d/f")) == "7 0 client ok"
    assert "-st_uid=12 -st_gid=34" in c.ask('8 0 client stat "%s" -uid=0' % url("/d/f"))
    assert c.ask('9 0 client chgrp "%s" -group=56 -uid=0' % url("/d/f")) == "9 0 client ok"
    assert "-st_gid=56" in c.ask('10 0 client stat "%s" -uid=0' % url("/d/f"))
    assert c.ask('11 0 client rename "%s" /d/g -uid=0' % url("/d/f")) == "11 0 client ok"
    assert c.ask('12 0 client rmdir "%s" -uid=0' % url("/d")).startswith('12 0 client failed 23 "')
    assert c.ask('13 0 client unlink "%s" -uid=0' % url("/d")) == \
        '13 0 client failed 17 "Path is a Directory" EISDIR'
    assert c.ask('14 0 client unlink "%s" -uid=0' % url("/d/g")) == "14 0 client ok"
    assert c.ask('15 0 client rmdir "%s" -uid=0' % url("/d")) == "15 0 client ok"
    assert c.ask('16 0 client unlink "%s" -uid=0' % url("/d/g")) == \
        '16 0 client failed 10001 "No such file or directory" ENOENT'


def test_permissions_follow_the_clients_uid(pool):
    pool.namespace.mkdir("/home", ROOT, 0o755)
    put(pool, "/home/secret", b"s", mode=0o600, uid=100, gid=100)
    other = Client(pool, uid=200, gid=200, access=Access.FULL)
    assert other.ask('1 0 client open "%s" r h 1 -uid=200' % url("/home/secret")) == \
        '1 0 client failed 19 "Permission denied: /home/secret is 0600 owned by uid 100 gid 100,' \
        ' client is uid 200 gid 200 (anonymous), needs read" EACCES'
    assert other.ask('2 0 client unlink "%s" -uid=200' % url("/home/secret")) == \
        '2 0 client failed 19 "Permission denied: /home is 0755 owned by uid 0 gid 0,' \
        ' client is uid 200 gid 200 (anonymous), needs write and search" EACCES'
    assert other.ask('3 0 client chmod "%s" -mode=511 -uid=200' % url("/home/secret")).startswith(
        '3 0 client failed 19 ')


def test_untrusted_clients_are_anonymous_whatever_uid_they_claim(pool):
    pool.namespace.mkdir("/home", ROOT, 0o755)
    put(pool, "/home/secret", b"s", mode=0o600, uid=100, gid=100)
    put(pool, "/home/open", b"o", mode=0o604, uid=100, gid=100)
    pool.namespace.mkdir("/tmp", ROOT, 0o1777)
    c = Client(pool, access=Access.FULL, trust_client_uid=("10.0.0.0/8",))  # claims uid 0
    assert c.ask('1 0 client open "%s" r h 1 -uid=0' % url("/home/secret")) == \
        '1 0 client failed 19 "Permission denied: /home/secret is 0600 owned by uid 100 gid 100,' \
        ' client is anonymous (its uid is not trusted: see --trust-client-uid), needs read" EACCES'
    assert c.ask('2 0 client chmod "%s" -mode=511 -uid=100' % url("/home/secret")).startswith(
        '2 0 client failed 19 ')
    assert c.ask('3 0 client chown "%s" -owner=0:0 -uid=0' % url("/home/open")).startswith(
        '3 0 client failed 19 ')
    # the "other" bits are what anonymous gets: r-- here, but no write
    assert c.ask('4 0 client stat "%s" -uid=100' % url("/home/open")).startswith("4 0 client stat ")
    assert c.ask('5 0 client unlink "%s" -uid=0' % url("/home/open")).endswith("EACCES")
    # what it creates belongs to nobody:nogroup
    assert c.ask('6 0 client mkdir "%s" -mode=493 -uid=0' % url("/tmp/d")) == "6 0 client ok"
    assert "-st_uid=65534 -st_gid=65534" in c.ask('7 0 client stat "%s"' % url("/tmp/d"))
    assert pool.namespace.lookup("/home/secret", ROOT).mode == 0o600


def test_trusted_networks_believe_the_claimed_uid(pool):
    put(pool, "/secret", b"s", mode=0o600, uid=100, gid=100)
    c = Client(pool, uid=100, gid=100, access=Access.FULL, trust_client_uid=("127.0.0.1/32",))
    assert c.ask('1 0 client chmod "%s" -mode=384 -uid=100' % url("/secret")) == "1 0 client ok"
    outside = Client(pool, uid=100, gid=100, access=Access.FULL, peer=IPv4Address(
        "TCP", "127.0.0.2", 40000), trust_client_uid=("127.0.0.1/32",))
    assert outside.ask('1 0 client chmod "%s" -mode=384 -uid=100' % url("/secret")).endswith(
        "EACCES")


def test_peers_outside_the_allowed_subnets_are_refused_at_connect(pool):
    inside = Client(pool, allowed_subnets=("127.0.0.0/8",))
    assert inside.ask('1 0 client ping') == "1 0 server pong"
    outside = Client(pool, hello=False, peer=IPv4Address("TCP", "10.1.2.3", 40000),
                     allowed_subnets=("127.0.0.0/8", "192.168.0.0/16"))
    assert outside.transport.disconnecting or outside.transport.disconnected
    assert outside.send(HELLO % (0, 0)) == []
    assert outside.factory.connections == set()


@pytest.mark.parametrize("named", ["10.9.9.9", "127.0.0.2", "::1", "mail.example.org", "-"])
def test_connect_back_goes_to_the_control_peer_whatever_host_is_named(pool, named):
    put(pool, "/f", b"data")
    c = Client(pool, connect_back=True)
    assert c.send(b'1 0 client open "%s" r %s 2049 -uid=0\n'
                  % (url("/f").encode(), named.encode())) == []
    host, port = c.factory.reactor.tcpClients[-1][:2]
    assert (host, port) == ("127.0.0.1", 2049)


@pytest.mark.parametrize("port", ["0", "65536", "-1", "x"])
def test_connect_back_refuses_callback_ports_out_of_range(pool, port):
    put(pool, "/f", b"data")
    c = Client(pool, connect_back=True)
    assert c.ask('1 0 client open "%s" r 127.0.0.1 %s -uid=0' % (url("/f"), port)).startswith(
        '1 0 client failed 10015 ')
    assert c.factory.reactor.tcpClients == []


def test_a_failed_connect_back_names_only_the_callback_port(pool):
    put(pool, "/f", b"data")
    c = Client(pool, connect_back=True)
    c.send(b'1 0 client open "%s" r 127.0.0.1 2049 -uid=0\n' % url("/f").encode())
    connector = c.factory.reactor.connectors[-1]
    c.transport.clear()
    factory = c.factory.reactor.tcpClients[-1][2]
    from twisted.internet.error import ConnectionRefusedError
    factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
    assert c.transport.value() == \
        b'1 0 client failed 5 "cannot connect back to the client\'s callback port 2049"\n'


def test_a_connection_holds_a_bounded_number_of_waiting_opens(pool):
    put(pool, "/f", b"data")
    c = Client(pool, max_waiting_opens=3)
    replies = [c.ask('%d 0 client open "%s" r -passive h 0 -uid=0' % (sid, url("/f")))
               for sid in (1, 2, 3)]
    assert all(" client connect " in line for line in replies)
    refused = '4 0 client failed 5 "Too many opens waiting for their data connection (3)" EMFILE'
    assert c.ask('4 0 client open "%s" r -passive h 0 -uid=0' % url("/f")) == refused
    assert c.ask('5 0 client opendir "%s" h 0 -uid=0' % url("/")).startswith(
        '5 0 client failed 5 "Too many opens waiting')
    assert sorted(c.proto.sessions) == [1, 2, 3]  # the refused ones hold nothing
    data_channel_for(c, replies[0])  # the first client connects for its data
    assert c.proto.waiting_opens() == 2
    assert " client connect " in c.ask('6 0 client open "%s" r -passive h 0 -uid=0' % url("/f"))


def test_a_write_announcing_more_than_the_max_file_size_is_refused(pool):
    c = Client(pool, access=Access.FULL, max_file_size=100)
    assert c.ask('1 0 client open "%s" w -alloc-size=101 -passive h 0 -uid=0' % url("/big")) == \
        '1 0 client failed 204 "No space left on device: 101 bytes announced, this door' \
        ' stores files of at most 100 bytes (--max-file-size)" ENOSPC'
    assert c.factory.reactor.tcpServers == []  # no data port was opened
    assert " client connect " in c.ask(
        '2 0 client open "%s" w -alloc-size=100 -passive h 0 -uid=0' % url("/fits"))
    assert " client connect " in c.ask(  # without an announced size the open goes on
        '3 0 client open "%s" w -passive h 0 -uid=0' % url("/unknown"))


def test_a_write_announcing_more_than_the_pool_holds_is_refused(pool):
    c = Client(pool, access=Access.FULL)
    free = pool.free_space()
    line = c.ask('1 0 client open "%s" w -alloc-size=%d -passive h 0 -uid=0'
                 % (url("/huge"), free + 10 ** 12))
    assert line.startswith('1 0 client failed 204 "No space left on device: ')
    assert line.endswith('bytes free" ENOSPC')
    assert c.factory.reactor.tcpServers == []
    with pytest.raises(Exception):
        pool.namespace.lookup("/huge", ROOT)


def test_readonly_anonymous_access_refuses_modifications(pool):
    put(pool, "/f", b"x")
    c = Client(pool)  # READONLY is the default
    assert c.ask('1 0 client mkdir "%s" -mode=493 -uid=0' % url("/d")).endswith("EACCES")
    assert c.ask('2 0 client unlink "%s" -uid=0' % url("/f")).endswith("EACCES")
    assert c.ask('3 0 client open "%s" w -truncate h 1 -uid=0' % url("/new")).endswith("EACCES")
    assert c.ask('4 0 client stat "%s" -uid=0' % url("/f")).startswith("4 0 client stat ")
    assert c.ask('5 0 client check "%s" -stagetime=-1 -location=h -uid=0' % url("/f")) == "5 0 client ok"


def test_no_anonymous_access_refuses_reads(pool):
    put(pool, "/f", b"x")
    c = Client(pool, access=Access.NONE)
    assert c.ask('1 0 client stat "%s" -uid=0' % url("/f")).endswith("EACCES")


def test_open_failures(pool):
    pool.namespace.mkdir("/d", ROOT, 0o755)
    put(pool, "/d/f", b"x")
    c = Client(pool, access=Access.FULL)
    assert c.ask('1 0 client open "%s" r h 1 -uid=0' % url("/nothere")) == \
        '1 0 client failed 2 "No such file or directory" ENOENT'
    assert c.ask('2 0 client open "%s" r h 1 -uid=0' % url("/d")) == '2 0 client failed 1 "Not a File"'
    assert c.ask('3 0 client open "%s" w -truncate h 1 -uid=0' % url("/d/f")) == \
        '3 0 client failed 1 "File is readOnly: /d/f exists; this door does not overwrite files' \
        ' (its --allow-truncate option allows it)"'


def test_check_and_stage(pool):
    pool.namespace.mkdir("/d", ROOT, 0o755)
    put(pool, "/d/f", b"x")
    c = Client(pool)
    assert c.ask('1 0 client check "%s" -stagetime=-1 -location=h -uid=0' % url("/d/f")) == "1 0 client ok"
    assert c.ask('2 0 client check "%s" -stagetime=-1 -location=h -uid=0' % url("/d/nothere")) == \
        '2 0 client failed 4 "File is not cached"'
    assert c.ask('3 0 client stage "%s" -stagetime=0 -location=h -uid=0' % url("/d/f")) == "3 0 client ok"
    assert c.ask('4 0 client stage "%s" -stagetime=0 -location=h -uid=0' % url("/d")).endswith(
        '"path is not a regular file" EINVAL')


def test_ping_status_and_unknown_commands(pool):
    c = Client(pool)
    assert c.ask("4 2 client ping") == "4 2 server pong"
    assert c.ask("5 0 client status") == '5 0 client failed 5 "Session ID 5 not found."'
    assert c.ask("6 0 client dance") == \
        "6 0 client failed 669 \"protocolViolation : Invalid command 'dance'\""
    assert c.ask('7 0 client stat "dcap://h/a%ff"') == \
        '7 0 client failed 10015 "Invalid path: path is not valid UTF-8" EINVAL'
    assert c.ask("8 0 client byebye") == "8 0 server byebye"
    assert c.transport.disconnecting


@pytest.mark.parametrize("line", [b"1 2 client\n", b"x y client stat\n", b"1 0 client stat \"/a\"\n"])
def test_protocol_violations_close_the_connection(pool, line):
    c = Client(pool, hello=(line != b'1 0 client stat "/a"\n'))
    out = c.send(line)
    assert len(out) == 1 and out[0].startswith("protocol violation: ")
    assert c.transport.disconnecting


def test_overlong_line_is_a_violation(pool):
    c = Client(pool)
    out = c.send(b"1 0 client stat " + b"x" * 70000 + b"\n")
    assert out[0].startswith("protocol violation: ")
    assert c.transport.disconnecting


def test_non_ascii_names_in_replies_are_escaped(pool):
    c = Client(pool, access=Access.FULL)
    line = c.ask('1 0 client mkdir "%s" -mode=493 -uid=0' % url("/caf%C3%A9"))
    assert line.startswith("1 0 client failed ") and line.endswith("EINVAL")
    assert max(line.encode("ascii")) < 128


def test_client_version_range(pool):
    low, high = parse_version_range("2.47:2.47.99")
    assert (low, high) == ((2, 47), (2, 47, 99))
    accepted = Client(pool, hello=False, client_version_min=low, client_version_max=high)
    assert accepted.send(HELLO % (0, 0)) == ["0 0 server welcome 2 47"]
    refused = Client(pool, hello=False, client_version_min=(2, 48))
    assert refused.send(HELLO % (0, 0)) == []
    assert refused.transport.disconnecting
    old = Client(pool, hello=False, client_version_max=(2, 46))
    assert old.send(HELLO % (0, 0)) == []


# -- opens, end to end in memory: the door's listener factory serves the data channel

from distcache.dcap import mover_codec as mc  # noqa: E402


def data_channel_for(client, connect_line):
    """Play the client's data connection on the port the door opened."""
    words = connect_line.split()
    assert words[3] == "connect"
    port_info = client.factory.reactor.tcpServers[-1]
    factory, interface = port_info[1], port_info[3]
    channel = factory.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(mc.encode_hello(int(words[0]), words[6].encode("ascii")))
    return channel, transport, interface, words


def test_connect_reply_names_the_address_the_client_used(pool):
    put(pool, "/f", b"hello")
    c = Client(pool)
    line = c.ask('2 0 client open "%s" r h 1 -timeout=-1 -onerror=default -uid=0' % url("/f"))
    channel, transport, interface, words = data_channel_for(c, line)
    local = c.transport.getHost().host
    assert words[4] == local and interface == local
    assert len(words[6]) >= 40
    c.transport.clear()
    channel.dataReceived(mc.encode_read(1048570) + mc.encode_close())
    assert mc.DATA_HEADER + struct.pack(">i", 5) + b"hello" in transport.value()
    assert c.transport.value() == b"2 0 client ok\n"


def test_connect_host_for_nat(pool):
    put(pool, "/f", b"x")
    c = Client(pool, connect_host="door.example.org")
    line = c.ask('2 0 client open "%s" r h 1 -uid=0' % url("/f"))
    channel, transport, interface, words = data_channel_for(c, line)
    assert words[4] == "door.example.org" and interface == ""


def test_write_commits_on_close_and_reports_ok(pool):
    c = Client(pool, access=Access.FULL)
    line = c.ask('2 0 client open "%s" w -mode=0600 -truncate h 1 -uid=0' % url("/new"))
    channel, transport, _, _ = data_channel_for(c, line)
    c.transport.clear()
    channel.dataReceived(mc.encode_write() + mc.encode_data(b"payload"))
    with pytest.raises(Exception):
        pool.namespace.lookup("/new", ROOT)  # not visible before CLOSE
    channel.dataReceived(mc.encode_close(zlib.adler32(b"payload")))
    assert c.transport.value() == b"2 0 client ok\n"
    entry = pool.namespace.lookup("/new", ROOT)
    assert entry.size == 7 and entry.mode == 0o600


def test_rw_open_modifies_in_place_when_truncation_is_allowed(pool):
    put(pool, "/f", b"0123456789")
    c = Client(pool, access=Access.FULL, allow_truncate=True)
    line = c.ask('2 0 client open "%s" rw -truncate h 1 -uid=0' % url("/f"))
    channel, transport, _, _ = data_channel_for(c, line)
    c.transport.clear()
    channel.dataReceived(mc.encode_seek_and_write(2, mc.SEEK_SET) + mc.encode_data(b"ab") + mc.encode_close())
    assert c.transport.value() == b"2 0 client ok\n"
    with pool.open_read(pool.namespace.lookup("/f", ROOT)) as f:
        assert f.read() == b"01ab456789"


def test_unlinks_clean_up_a_failed_write_only_within_the_window(pool):
    put(pool, "/f", b"earlier")
    c = Client(pool, access=Access.FULL, allow_truncate=True)
    clock = c.factory.reactor
    line = c.ask('2 0 client open "%s" w -truncate h 1 -uid=0' % url("/f"))
    channel, _, _, _ = data_channel_for(c, line)
    c.transport.clear()
    channel.dataReceived(mc.encode_write() + mc.encode_data(b"new") +
                         mc.encode_close(zlib.adler32(b"new") ^ 1))
    assert c.transport.value().startswith(b'2 0 client failed 204 "Checksum mismatch')
    clock.advance(c.proto.CLEANUP_WINDOW)
    assert c.ask('3 0 client unlink "%s" -uid=0' % url("/f")) == "3 0 client ok"
    with pool.open_read(pool.namespace.lookup("/f", ROOT)) as f:
        assert f.read() == b"earlier"
    clock.advance(0.5)  # past the window: an unlink is the user's again
    assert c.ask('4 0 client unlink "%s" -uid=0' % url("/f")) == "4 0 client ok"
    with pytest.raises(Exception):
        pool.namespace.lookup("/f", ROOT)


def test_a_refused_open_is_no_failed_write(pool):
    put(pool, "/f", b"earlier")
    c = Client(pool, access=Access.FULL)  # no --allow-truncate
    assert c.ask('1 0 client open "%s" w -truncate h 1 -uid=0' % url("/f")).startswith(
        '1 0 client failed 1 "File is readOnly')
    assert c.ask('2 0 client unlink "%s" -uid=0' % url("/f")) == "2 0 client ok"
    with pytest.raises(Exception):
        pool.namespace.lookup("/f", ROOT)


def test_a_refused_overwrite_says_what_would_allow_it(pool):
    put(pool, "/f", b"old")
    c = Client(pool, access=Access.FULL, allow_truncate=True)
    assert c.ask('1 0 client open "%s" w h 1 -uid=0' % url("/f")) == \
        '1 0 client failed 1 "File is readOnly: /f exists; the client did not ask to truncate' \
        ' (-truncate)"'


def test_control_eof_kills_the_mover_and_discards_the_write(pool):
    put(pool, "/f", b"old")
    c = Client(pool, access=Access.FULL, allow_truncate=True)
    line = c.ask('2 0 client open "%s" w -truncate h 1 -uid=0' % url("/f"))
    channel, transport, _, _ = data_channel_for(c, line)
    channel.dataReceived(mc.encode_write() + mc.DATA_HEADER + struct.pack(">i", 100) + b"partial")
    c.proto.connectionLost(None)
    assert transport.disconnecting or transport.disconnected
    assert c.proto.sessions == {}
    with pool.open_read(pool.namespace.lookup("/f", ROOT)) as f:
        assert f.read() == b"old"


# -- golden: the real dccp's control lines from the transcript, replayed

from pathlib import Path  # noqa: E402

TRANSCRIPT = Path(__file__).resolve().parents[1] / "vectors" / "dccp-2.47.14-transcript.txt"


def _transcript_connections():
    """[(connect_back, [client lines], [door replies])] per control connection."""
    connections, connect_back = [], False
    for raw in TRANSCRIPT.read_text(encoding="ascii").splitlines():
        if raw.startswith("listening "):
            connect_back = raw.split()[1] == "22126"
        elif raw.startswith("CTL connect from"):
            connections.append((connect_back, [], []))
        elif raw.startswith("CTL<- '"):
            connections[-1][1].append(raw[len("CTL<- '"):-1])
        elif raw.startswith("CTL-> ") and not raw.startswith("CTL-> ok for"):
            connections[-1][2].append(raw[len("CTL-> "):])
    return connections


def _same_shape(ours, theirs):
    o, t = ours.split(), theirs.split()
    assert o[:4] == t[:4], (ours, theirs)
    kind = t[3]
    if kind in ("welcome", "ok"):
        assert ours == theirs
    elif kind == "stat":
        assert o[:7] == t[:7] and "-st_mode=-rw-r--r--" in o
    elif kind == "connect":
        assert len(o) == len(t) == 7 and o[5].isdigit() and len(o[6]) >= 40
    elif kind == "failed":
        assert o[4] == t[4] and o[-1] == t[-1], (ours, theirs)


def test_replays_the_real_client_transcript(pool):
    pool.namespace.mkdir("/pnfs", ROOT, 0o755)
    put(pool, "/pnfs/x", b"x" * 17000)
    connections = _transcript_connections()
    assert len(connections) >= 10
    for connect_back, requests, replies in connections:
        c = Client(pool, hello=False, access=Access.FULL, allow_truncate=True, connect_back=connect_back)
        ours = []
        for line in requests:
            ours += c.send(line.encode("ascii") + b"\n")
        assert len(ours) == len(replies), (requests, ours, replies)
        for mine, theirs in zip(ours, replies):
            _same_shape(mine, theirs)
        c.proto.connectionLost(None)


# -- fuzzing: whatever a client sends, the door answers in ASCII or closes, never crashes

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

_COMMANDS = ["stat", "lstat", "open", "check", "stage", "unlink", "rmdir", "mkdir", "chmod", "chown",
             "chgrp", "rename", "opendir", "ping", "status", "hello", "frob"]
_path = st.lists(st.sampled_from(["a", "b", "..", ".", "%2e%2e", "%00", "%ff", "caf%C3%A9", "x:y", "", "%22"]),
                 max_size=4).map(lambda parts: "dcap://h:1/" + "/".join(parts))
_option = st.tuples(st.sampled_from(["uid", "gid", "mode", "owner", "group", "truncate", "passive", "timeout"]),
                    st.one_of(st.none(), st.sampled_from(["0", "-1", "493", "0x1ff", "12:34", "abc", "99999999999"])))
_word = st.one_of(_path.map(lambda p: '"%s"' % p), st.sampled_from(["r", "w", "rw", "x", "h", "0", "1", '""']),
                  _option.map(lambda kv: "-%s" % kv[0] if kv[1] is None else "-%s=%s" % kv))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 30), st.sampled_from(_COMMANDS), st.lists(_word, max_size=6)),
                max_size=8),
       st.binary(max_size=60))
def test_random_requests_get_ascii_replies_and_no_internal_errors(pool, requests, garbage):
    c = Client(pool, access=Access.FULL, allow_truncate=True)
    lines = [" ".join([str(sid), "0", "client", cmd] + words).encode("ascii") for sid, cmd, words in requests]
    out = b""
    for line in lines + [garbage.replace(b"\n", b" ")]:
        c.transport.clear()
        c.proto.dataReceived(line + b"\n")
        out = c.transport.value()
        assert all(b < 128 for b in out)
        assert all(len(reply) < 4096 for reply in out.split(b"\n"))
        assert b"internalError : request failed" not in out
        if c.transport.disconnecting:
            break
    c.proto.connectionLost(None)


def test_hello_with_odd_version_words_still_gets_an_ascii_welcome(pool):
    c = Client(pool, hello=False)
    assert c.send(b'0 0 client hello 0 0 \xe9 x 1 "" -uid=0\n') == ["0 0 server welcome 0 0"]


def test_an_open_whose_data_vanished_fails_and_frees_its_session(pool, monkeypatch):
    put(pool, "/f", b"data")
    c = Client(pool)

    def vanished(entry):
        raise OSError("disk copy unreadable")

    monkeypatch.setattr(pool, "open_read", vanished)
    line = c.ask('2 0 client open "%s" r h 1 -uid=0' % url("/f"))
    assert line.startswith('2 0 client failed 5 "internalError : ')
    assert c.proto.sessions == {}
    monkeypatch.undo()
    assert c.ask('2 0 client stat "%s" -uid=0' % url("/f")).startswith("2 0 client stat ")


# -- a store that answers later (the seam for a network namespace)

from twisted.internet import defer as _defer  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402


class LaterNamespace:
    """The real namespace, but every answer arrives one clock tick later."""

    def __init__(self, namespace, clock):
        self._namespace = namespace
        self._clock = clock

    def __getattr__(self, name):
        method = getattr(self._namespace, name)

        def later(*args, **kwargs):
            d = _defer.Deferred()

            def answer():
                try:
                    d.callback(method(*args, **kwargs))
                except Exception:
                    d.errback()
            self._clock.callLater(1, answer)
            return d
        return later


def test_door_waits_for_a_store_that_answers_later(pool):
    pool.namespace.mkdir("/d", ROOT, 0o755)
    put(pool, "/d/f", b"abc")
    c = Client(pool, access=Access.FULL)
    clock = Clock()
    c.factory.namespace = LaterNamespace(pool.namespace, clock)
    assert c.send(b'1 0 client stat "%s" -uid=0\n' % url("/d/f").encode()) == []
    assert c.send(b'1 0 client stat "%s" -uid=0\n' % url("/d/f").encode()) == \
        ['1 0 client failed 5 "internalError : Duplicated session id"']
    c.send(b'2 0 client mkdir "%s" -mode=493 -uid=0\n' % url("/d").encode())
    c.send(b'3 0 client check "%s" -stagetime=-1 -location=h -uid=0\n' % url("/d/none").encode())
    c.send(b'4 0 client open "%s" r h 1 -uid=0\n' % url("/d/f").encode())
    c.transport.clear()
    clock.advance(1)
    out = c.transport.value().decode("ascii").splitlines()
    assert out[0].startswith("1 0 client stat -st_size=3 ")
    assert out[1] == '2 0 client failed 20 "Directory exists" EEXIST'
    assert out[2] == '3 0 client failed 4 "File is not cached"'
    assert out[3].startswith("4 0 client connect ")
    assert list(c.proto.sessions) == [4]  # only the open still waits, for its mover
    assert c.proto.sessions[4].state() == "awaiting_mover"
    c.send(b'5 0 client opendir "%s" h 1 -uid=0\n' % url("/d").encode())
    c.transport.clear()
    clock.advance(1)
    assert c.transport.value().startswith(b"5 0 client connect ")


def test_status_names_the_sessions_state_and_how_long_it_has_been_in_it(pool):
    put(pool, "/f", b"hello")
    c = Client(pool)
    c.send(b'0 0 client hello 0 0 2 47 14 "" -uid=5 -pid=4242 -gid=0\n')
    line = c.ask('2 0 client open "%s" r h 1 -uid=0' % url("/f"))
    assert line.split()[3] == "connect"
    c.factory.reactor.advance(3)
    assert c.ask("2 9 client status") == '2 9 client ok  0 "[2][5][4242] awaiting_mover(3)"'
    channel, transport, _, _ = data_channel_for(c, line)
    assert c.ask("2 10 client status") == '2 10 client ok  0 "[2][5][4242] transferring(0)"'
    c.transport.clear()
    channel.dataReceived(mc.encode_close())
    assert c.transport.value() == b"2 0 client ok\n"
    assert c.ask("2 11 client status") == '2 11 client failed 5 "Session ID 2 not found."'


def test_open_by_pnfsid_with_path_option(pool):
    put(pool, "/pf", b"by id")
    pnfsid = pool.namespace.lookup("/pf", ROOT).pnfsid
    c = Client(pool)
    line = c.ask('3 0 client open %s r h 1 -path=/mnt/d/f -uid=0' % pnfsid)
    channel, transport, _, _ = data_channel_for(c, line)
    c.transport.clear()
    channel.dataReceived(mc.encode_read(100) + mc.encode_close())
    assert mc.DATA_HEADER + struct.pack(">i", 5) + b"by id" in transport.value()
    assert c.transport.value() == b"3 0 client ok\n"
    missing = "0" * 35 + "F"
    assert c.ask('4 0 client open %s r h 1 -path=/x -uid=0' % missing) == \
        '4 0 client failed 10001 "No such file or directory" ENOENT'


@pytest.mark.parametrize("scheme", ["dcap", "gsidcap", "dcaps", "krb5dcap", "Xdcap"])
def test_any_scheme_ending_in_dcap_names_the_door(pool, scheme):
    put(pool, "/sf", b"x")
    c = Client(pool)
    reply = c.ask('1 0 client stat "%s://door.example.org:22125//sf" -uid=0' % scheme)
    assert reply.startswith("1 0 client stat -st_size=1 "), reply


def test_new_files_and_directories_without_mode_get_dcaches_defaults(pool):
    c = Client(pool, access=Access.FULL)
    assert c.ask('1 0 client mkdir "%s" -uid=0' % url("/nomode")) == "1 0 client ok"
    assert pool.namespace.lookup("/nomode", ROOT).mode == 0o700
    line = c.ask('2 0 client open "%s" w h 1 -uid=0' % url("/nomode/f"))
    channel, transport, _, _ = data_channel_for(c, line)
    with pytest.raises(Exception):
        pool.namespace.lookup("/nomode/f", ROOT)  # a new file appears at CLOSE
    assert c.ask('3 0 client stat "%s" -uid=0' % url("/nomode/f")) == \
        '3 0 client failed 10001 "No such file or directory" ENOENT'
    channel.dataReceived(mc.encode_write() + mc.encode_data(b"x") + mc.encode_close())
    assert pool.namespace.lookup("/nomode/f", ROOT).mode == 0o600
    assert "-st_mode=-rw-------" in c.ask('4 0 client stat "%s" -uid=0' % url("/nomode/f"))


def test_hsm_option_is_refused_by_a_pool_without_tape(pool):
    put(pool, "/h", b"x")
    c = Client(pool, access=Access.FULL)
    assert c.ask('1 0 client open "%s" r h 1 -hsm=osm -uid=0' % url("/h")) == \
        '1 0 client failed 105 "Hsm Support Not enabled"'
    assert c.ask('2 0 client open "%s" w h 1 -hsm=osm -uid=0' % url("/hw")) == \
        '2 0 client failed 105 "Hsm Support Not enabled"'


def test_hsm_option_is_taken_by_a_pool_with_tape(tmp_path):
    from twisted.internet.task import Clock
    from distcache.dcap import hsm
    tape = hsm.DirectoryTape(str(tmp_path / "tape"), Clock(), stage_delay=0, flush_delay=0)
    p = open_pool(str(tmp_path / "root"), hsm=tape, fsync=False)
    try:
        put(p, "/h", b"x")
        c = Client(p)
        assert c.ask('1 0 client open "%s" r h 1 -hsm=osm -uid=0' % url("/h")).split()[3] == "connect"
    finally:
        p.namespace.close()
