"""A small blocking DCAP client for what dccp cannot be made to do (bad checksums, hangups)."""

import socket
import struct

from distcache.dcap import mover_codec as mc


class ControlClient:
    def __init__(self, port, uid=0, gid=0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rb")
        self.send('0 0 client hello 0 0 2 47 14 "" -uid=%d -pid=1 -gid=%d' % (uid, gid))
        assert self.line() == "0 0 server welcome 2 47"

    def send(self, text):
        self.sock.sendall(text.encode("ascii") + b"\n")

    def line(self):
        data = self.file.readline()
        return data.decode("ascii").rstrip("\n")

    def ask(self, text):
        self.send(text)
        return self.line()

    def close(self):
        self.file.close()
        self.sock.close()


class DataClient:
    def __init__(self, connect_line, sid):
        words = connect_line.split()
        assert words[3] == "connect", connect_line
        host, port, challenge = words[4], int(words[5]), words[6]
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.sendall(mc.encode_hello(sid, challenge.encode("ascii")))

    def send(self, data):
        self.sock.sendall(data)

    def recv_exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError("data connection closed after %d of %d bytes" % (len(buf), n))
            buf += chunk
        return buf

    def reply(self):
        """One reply block: (type, cmd, rc, rest)."""
        (n,) = struct.unpack(">i", self.recv_exact(4))
        body = self.recv_exact(n)
        kind, cmd, rc = struct.unpack_from(">iii", body)
        return kind, cmd, rc, body[12:]

    def data(self):
        """A DATA header, blocks and -1: the bytes."""
        (n,) = struct.unpack(">i", self.recv_exact(4))
        assert struct.unpack(">i", self.recv_exact(n))[0] == mc.DATA
        out = b""
        while True:
            (size,) = struct.unpack(">i", self.recv_exact(4))
            if size == -1:
                return out
            out += self.recv_exact(size)

    def close(self):
        self.sock.close()
