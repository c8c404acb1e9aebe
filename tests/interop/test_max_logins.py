"""--max-logins and --max-logins-per-peer: the door's connection limits (dCache's -maxLogin).

Connections over a limit are closed as they connect; reaching a limit is
logged once per episode, and so is being back under it.
"""

import socket

from interop_support import TRUST_LOCAL, Door
from polling import wait_until
from rawclient import ControlClient


def _refused(source="127.0.0.1", port=0):
    """True when a new control connection is closed before the door says anything."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10,
                                        source_address=(source, 0))
    except ConnectionResetError:  # closed so fast that the connect itself saw the reset
        return True
    try:
        sock.sendall(b'0 0 client hello 0 0 2 47 14 "" -uid=0 -pid=1 -gid=0\n')
        try:
            return sock.recv(100) == b""
        except ConnectionResetError:
            return True
    finally:
        sock.close()


def test_logins_over_the_limit_are_closed_and_the_episode_logged_once(tmp_path):
    door = Door(str(tmp_path), *TRUST_LOCAL, "--max-logins", "2", "--max-logins-per-peer", "0")
    try:
        first, second = ControlClient(door.port), ControlClient(door.port)
        assert _refused(port=door.port) and _refused(port=door.port)
        log = door.log_text()
        assert log.count("the most allowed (--max-logins)") == 1, log
        first.close()
        wait_until(lambda: "back under the connection limit" in door.log_text(), timeout=10)
        third = ControlClient(door.port)  # welcomed again
        assert third.ask("1 0 client ping") == "1 0 server pong"
        assert "2 connections were refused meanwhile" in door.log_text()
        second.close()
        third.close()
    finally:
        door.stop()


def test_one_address_over_its_limit_is_refused_while_others_connect(tmp_path):
    door = Door(str(tmp_path), *TRUST_LOCAL, "--max-logins-per-peer", "1")
    try:
        mine = ControlClient(door.port)
        assert _refused("127.0.0.1", door.port)
        assert not _refused("127.0.0.2", door.port)  # another address still gets in
        assert "(--max-logins-per-peer)" in door.log_text()
        mine.close()
    finally:
        door.stop()
