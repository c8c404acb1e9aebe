"""DCAP accounts: the password file, its slow hashes, and checking a login.

The file has one account a line, ``user:hash:uid:gid``; blank lines and
lines starting with ``#`` are kept as they are.  The hash is scrypt
(``hashlib.scrypt``, or cryptography's where the standard library has none,
as on PyPy 3.9) with a random salt, stored
with its cost parameters so that stronger settings can come later without
breaking old lines::

    $scrypt$ln=14,r=8,p=5$<salt, base64>$<key, base64>

scrypt is slow and needs memory on every try, which is what makes a stolen
file expensive to attack; N=2^14, r=8, p=5 is one of the settings OWASP's
password storage guidance gives as a minimum (16 MiB, about 0.2 s a try).  Checking a
password therefore never runs on the reactor thread: the door hands
`PasswordFile.check` to a worker thread.

The file is read again on every check, so `dcap-admin passwd` takes effect
on the next login without restarting the door.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from typing import List, Optional

from distcache.dcap.namespace import Access, Subject

SCHEME = "scrypt"
#: log2 of scrypt's CPU/memory cost N, its block size r and parallelism p.
COST_LOG2 = 14
BLOCK_SIZE = 8
PARALLELISM = 5
SALT_BYTES = 16
KEY_BYTES = 32

#: Longest user name and password the ssl tunnel plugin can send: it reads
#: each into a 32-byte buffer, newline included.
PLUGIN_LIMIT = 31

_NAME = re.compile(r"[A-Za-z0-9_.@+-]{1,%d}\Z" % PLUGIN_LIMIT)
_HASH = re.compile(r"\$scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)\Z")


class PasswordFileError(ValueError):
    """A password file, line or value that cannot be used."""


@dataclass(frozen=True)
class Account:
    """A user the door knows: the uid and gid its requests run as."""

    user: str
    uid: int
    gid: int

    def subject(self) -> Subject:
        """Who an authenticated client is: its own ids, held to permission bits only."""
        return Subject(self.uid, self.gid, Access.FULL, user=self.user)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def _scrypt(password: str, salt: bytes, ln: int, r: int, p: int, size: int) -> bytes:
    n = 1 << ln
    if not hasattr(hashlib, "scrypt"):
        return _openssl_scrypt(password.encode("utf-8"), salt, n, r, p, size)
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                          maxmem=256 * n * r * p + (1 << 20), dklen=size)


def _openssl_scrypt(secret: bytes, salt: bytes, n: int, r: int, p: int, size: int) -> bytes:
    """scrypt from cryptography (OpenSSL's, as hashlib's is), for PyPy 3.9's hashlib, which has none."""
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    return Scrypt(salt=salt, length=size, n=n, r=r, p=p).derive(secret)


def hash_password(password: str, salt: Optional[bytes] = None) -> str:
    """The stored form of password, with a fresh random salt."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    key = _scrypt(password, salt, COST_LOG2, BLOCK_SIZE, PARALLELISM, KEY_BYTES)
    return "$%s$ln=%d,r=%d,p=%d$%s$%s" % (SCHEME, COST_LOG2, BLOCK_SIZE, PARALLELISM,
                                          _b64(salt), _b64(key))


def check_hash(stored: str) -> tuple:
    """The parameters of a stored hash; PasswordFileError if it is not one we make."""
    m = _HASH.match(stored)
    if m is None:
        raise PasswordFileError("not an scrypt hash of the form $scrypt$ln=N,r=R,p=P$salt$key")
    ln, r, p = (int(x) for x in m.group(1, 2, 3))
    if not (1 <= ln <= 20 and 1 <= r <= 32 and 1 <= p <= 16):
        raise PasswordFileError("scrypt parameters out of range (ln 1..20, r 1..32, p 1..16)")
    try:
        salt, key = _unb64(m.group(4)), _unb64(m.group(5))
    except ValueError:
        raise PasswordFileError("bad base64 in the hash") from None
    if not 8 <= len(key) <= 64:
        raise PasswordFileError("the hash's key must be 8 to 64 bytes")
    return ln, r, p, salt, key


def verify_password(password: str, stored: str) -> bool:
    """Whether password matches stored (compared in constant time)."""
    ln, r, p, salt, key = check_hash(stored)
    return hmac.compare_digest(_scrypt(password, salt, ln, r, p, len(key)), key)


# A hash of nothing, checked for unknown users so that they cost as much as known ones.
_DECOY = None


def _decoy() -> str:
    global _DECOY
    if _DECOY is None:
        _DECOY = hash_password(secrets.token_hex(8))
    return _DECOY


def check_user_name(user: str) -> str:
    if not _NAME.match(user):
        raise PasswordFileError(
            "user names are 1 to %d characters of letters, digits and _ . @ + -" % PLUGIN_LIMIT)
    return user


def _id(text: str, what: str) -> int:
    if not text.isdigit() or not text.isascii() or int(text) > 0x7FFFFFFF:
        raise PasswordFileError("%s must be a number from 0 to 2147483647" % what)
    return int(text)


@dataclass
class Line:
    """One line of the file: an account with its hash, or text kept as it is."""

    text: str
    account: Optional[Account] = None
    hash: str = ""

    @classmethod
    def parse(cls, text: str, number: int = 0) -> "Line":
        stripped = text.strip()
        if not stripped or stripped.startswith("#"):
            return cls(text)
        parts = stripped.split(":")
        if len(parts) != 4:
            raise PasswordFileError("line %d: expected user:hash:uid:gid" % number)
        user, stored, uid, gid = parts
        try:
            check_user_name(user)
            check_hash(stored)
            account = Account(user, _id(uid, "the uid"), _id(gid, "the gid"))
        except PasswordFileError as e:
            raise PasswordFileError("line %d: %s" % (number, e)) from None
        return cls(text, account, stored)

    @classmethod
    def make(cls, account: Account, stored: str) -> "Line":
        return cls("%s:%s:%d:%d" % (account.user, stored, account.uid, account.gid),
                   account, stored)


class PasswordFile:
    """The accounts in one file: read on every use, written whole and atomically."""

    def __init__(self, path: str):
        self.path = path

    def lines(self) -> List[Line]:
        """Every line; PasswordFileError (naming the line) for one that is not valid."""
        try:
            with open(self.path, encoding="utf-8") as f:
                texts = f.read().splitlines()
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as e:
            raise PasswordFileError("cannot read %s: %s" % (self.path, e)) from None
        return [Line.parse(text, n) for n, text in enumerate(texts, 1)]

    def find(self, user: str) -> Optional[Line]:
        for line in self.lines():
            if line.account is not None and line.account.user == user:
                return line
        return None

    def check(self, user: str, password: str) -> Optional[Account]:
        """The account if user's password is password, else None.  Blocking and slow."""
        line = self.find(user)
        if line is None:
            verify_password(password, _decoy())
            return None
        return line.account if verify_password(password, line.hash) else None

    def set(self, user: str, password: str, uid: Optional[int] = None,
            gid: Optional[int] = None) -> Account:
        """Add user, or give it a new password (and ids when given)."""
        check_user_name(user)
        lines = self.lines()
        stored = hash_password(password)
        for i, line in enumerate(lines):
            if line.account is not None and line.account.user == user:
                old = line.account
                account = Account(user, old.uid if uid is None else uid,
                                  old.gid if gid is None else gid)
                lines[i] = Line.make(account, stored)
                break
        else:
            if uid is None or gid is None:
                raise PasswordFileError("a new user needs --uid and --gid")
            account = Account(user, uid, gid)
            lines.append(Line.make(account, stored))
        self._write(lines)
        return account

    def remove(self, user: str) -> bool:
        """Take user out; False if it was not there."""
        lines = self.lines()
        kept = [line for line in lines if line.account is None or line.account.user != user]
        if len(kept) == len(lines):
            return False
        self._write(kept)
        return True

    def _write(self, lines: List[Line]):
        """Replace the file whole, keeping its owner and mode (0600 when new), so a door never reads half."""
        directory = os.path.dirname(os.path.abspath(self.path))
        fd, temp = tempfile.mkstemp(prefix=".passwd.", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write("".join(line.text + "\n" for line in lines))
                f.flush()
                os.fsync(f.fileno())
            mode = 0o600
            try:
                st = os.stat(self.path)
                mode = st.st_mode & 0o770  # the door's group may read it; others never
                os.chown(temp, st.st_uid, st.st_gid)
            except FileNotFoundError:
                pass
            except PermissionError:
                pass  # not root: the new file is ours
            os.chmod(temp, mode)
            os.replace(temp, self.path)
        except BaseException:
            if os.path.exists(temp):
                os.unlink(temp)
            raise
