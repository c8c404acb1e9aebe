"""The door's login options, dcap-admin passwd, and who a logged-in connection's requests run as."""

import io
import os
import sys

import pytest
from twisted.internet import task
from twisted.python import usage

from distcache import dcap_tap
from distcache.dcap import admin
from distcache.dcap.auth import Account, PasswordFile
from distcache.dcap.control import parse_request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tls_support import CA  # noqa: E402


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("pki"))
    return CA(directory, "door-ca").issue("localhost", server=True)


def parse(*argv):
    options = dcap_tap.Options()
    options.parseOptions(["--root", "/tmp/x"] + list(argv))
    return options


def test_tls_and_passwd_reach_the_configuration(pki, tmp_path):
    passwd = str(tmp_path / "passwd")
    PasswordFile(passwd).set("alice", "pw", 1000, 100)
    config = dcap_tap.door_config(parse("--tls-cert", pki.cert, "--tls-key", pki.key, "--passwd", passwd))
    assert (config.tls_cert, config.tls_key, config.passwd) == (pki.cert, pki.key, passwd)


def test_an_ssl_listen_address_is_tls_enough_for_passwd(pki, tmp_path):
    passwd = str(tmp_path / "passwd")
    options = parse("--listen", "ssl:0:privateKey=%s:certKey=%s" % (pki.key, pki.cert),
                    "--passwd", passwd)
    assert dcap_tap.door_config(options).tls_cert is None


@pytest.mark.parametrize("argv, message", [
    (["--passwd", "PASSWD"], "--passwd needs TLS"),
    (["--tls-key", "KEY"], "--tls-key needs --tls-cert"),
    (["--tls-cert", "MISSING"], "--tls-cert: cannot read"),
    (["--tls-cert", "CERT", "--listen", "ssl:0:privateKey=KEY"], "wrap TLS twice"),
    (["--tls-cert", "CERT", "--tls-key", "KEY", "--passwd", "BAD"], "--passwd: line 1"),
])
def test_what_cannot_work_is_refused_at_start(pki, tmp_path, argv, message):
    bad = tmp_path / "bad"
    bad.write_text("alice:plain:1:2\n")
    names = {"PASSWD": str(tmp_path / "passwd"), "KEY": pki.key, "CERT": pki.cert,
             "MISSING": str(tmp_path / "missing.pem"), "BAD": str(bad)}
    argv = [names.get(a, a) for a in argv]
    with pytest.raises(usage.UsageError, match=message):
        parse(*argv)


def run_admin(*argv, stdin=""):
    out, err = io.StringIO(), io.StringIO()
    d = admin.run(list(argv), task.Clock(), out, err, stdin=io.StringIO(stdin))
    codes = []
    d.addCallback(codes.append)
    return codes[0], out.getvalue(), err.getvalue()


def test_dcap_admin_passwd(tmp_path):
    path = str(tmp_path / "passwd")
    assert run_admin("passwd", path, "alice", stdin="pw\n")[0] == 1  # no ids for a new user
    assert run_admin("passwd", path, "alice", "--uid", "1000", "--gid", "100",
                     stdin="pw\n") == (0, "added alice (uid 1000, gid 100)\n", "")
    assert PasswordFile(path).check("alice", "pw") == Account("alice", 1000, 100)
    code, out, _ = run_admin("passwd", path, "alice", "--gid", "7", stdin="new pw\n")
    assert (code, out) == (0, "changed alice (uid 1000, gid 7)\n")
    assert PasswordFile(path).check("alice", "new pw") == Account("alice", 1000, 7)
    code, _, err = run_admin("passwd", path, "alice", stdin="x" * 32 + "\n")
    assert code == 1 and "at most 31 bytes" in err
    code, _, err = run_admin("passwd", path, "alice", stdin="\n")
    assert code == 1 and "empty password" in err
    assert run_admin("passwd", path, "alice", "--delete")[:2] == (0, "removed alice\n")
    assert run_admin("passwd", path, "alice", "--delete")[0] == 1


class FakeFactory:
    def __init__(self, config):
        self.config = config


def test_a_logged_in_users_ids_win_over_what_the_client_says():
    from distcache.dcap.door import DoorProtocol
    from distcache.dcap.doorconfig import DoorConfig
    from distcache.dcap.namespace import Access
    door = DoorProtocol()
    door.factory = FakeFactory(DoorConfig(access=Access.READONLY))
    r = parse_request(b"1 0 client stat dcap://h/x -uid=0 -gid=0")
    assert door.subject(r).access is Access.READONLY and door.subject(r).user == ""
    door._logged_in(Account("alice", 1000, 100))
    s = door.subject(r)
    assert (s.uid, s.gid, s.access, s.user) == (1000, 100, Access.FULL, "alice")
