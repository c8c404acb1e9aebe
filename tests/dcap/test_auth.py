"""The password file and its scrypt hashes."""

import os
import stat

import pytest
from hypothesis import given, settings, strategies as st

from distcache.dcap.auth import (
    Account, Line, PasswordFile, PasswordFileError, check_hash, hash_password, verify_password,
)
from distcache.dcap.namespace import Access


def test_hash_verifies_its_password_only():
    stored = hash_password("s3cret:x")
    assert stored.startswith("$scrypt$ln=14,r=8,p=5$")
    assert verify_password("s3cret:x", stored)
    assert not verify_password("s3cret:y", stored)
    assert not verify_password("", stored)


def test_salts_differ_and_a_given_salt_repeats():
    assert hash_password("pw") != hash_password("pw")
    assert hash_password("pw", salt=b"0123456789abcdef") == hash_password("pw", salt=b"0123456789abcdef")


@pytest.mark.parametrize("stored", [
    "plain", "$scrypt$ln=14,r=8$AAAA$AAAA", "$scrypt$ln=0,r=8,p=1$AAAAAAAA$AAAAAAAAAAAA",
    "$scrypt$ln=21,r=8,p=1$AAAAAAAA$AAAAAAAAAAAA", "$scrypt$ln=14,r=8,p=1$AAAAAAAA$AAAA",
    "$pbkdf2$ln=14,r=8,p=1$AAAAAAAA$AAAAAAAAAAAA", "$scrypt$ln=14,r=8,p=1$AA:A$AAAAAAAAAAAA",
])
def test_malformed_hashes_are_refused(stored):
    with pytest.raises(PasswordFileError):
        check_hash(stored)


def test_file_round_trip_keeps_comments_and_mode(tmp_path):
    path = str(tmp_path / "passwd")
    with open(path, "w") as f:
        f.write("# door logins\n\n")
    os.chmod(path, 0o640)
    accounts = PasswordFile(path)
    assert accounts.set("alice", "pw-a", 1000, 100) == Account("alice", 1000, 100)
    accounts.set("bob", "pw-b", 1001, 100)
    accounts.set("alice", "pw-a2", gid=200)  # new password and gid, same uid
    text = open(path).read().splitlines()
    assert text[:2] == ["# door logins", ""]
    assert [line.split(":")[0] for line in text[2:]] == ["alice", "bob"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert accounts.check("alice", "pw-a2") == Account("alice", 1000, 200)
    assert accounts.check("alice", "pw-a") is None
    assert accounts.check("nobody", "pw-a2") is None
    assert accounts.remove("bob") and not accounts.remove("bob")
    assert accounts.check("bob", "pw-b") is None


def test_new_file_is_owner_only_and_new_user_needs_ids(tmp_path):
    accounts = PasswordFile(str(tmp_path / "passwd"))
    with pytest.raises(PasswordFileError, match="--uid and --gid"):
        accounts.set("carol", "pw")
    accounts.set("carol", "pw", 5, 6)
    assert stat.S_IMODE(os.stat(accounts.path).st_mode) == 0o600


def test_missing_file_has_no_accounts(tmp_path):
    assert PasswordFile(str(tmp_path / "none")).check("alice", "pw") is None


@pytest.mark.parametrize("text, why", [
    ("alice:$scrypt$x:1:2", "line 1: not an scrypt hash"),
    ("alice::1:2", "line 1"),
    ("alice:%s:1", "line 1: expected user:hash:uid:gid"),
    ("alice:%s:-1:2", "line 1: the uid must be a number"),
    ("alice:%s:1:x", "line 1: the gid must be a number"),
    ("al ice:%s:1:2", "line 1: user names"),
    ("%s" % ("a" * 32) + ":%s:1:2", "line 1: user names"),
])
def test_bad_lines_name_their_number(tmp_path, text, why):
    stored = "$scrypt$ln=14,r=8,p=5$AAAAAAAAAAAAAAAAAAAAAA$" + "A" * 43
    path = tmp_path / "passwd"
    path.write_text(text.replace("%s", stored) + "\n")
    with pytest.raises(PasswordFileError, match=why.replace("(", r"\(")):
        PasswordFile(str(path)).lines()


def test_account_subject_uses_its_ids_with_full_access():
    subject = Account("alice", 1000, 100).subject()
    assert (subject.uid, subject.gid, subject.access, subject.user) == (1000, 100, Access.FULL, "alice")


@settings(max_examples=300)
@given(st.text(max_size=200))
def test_any_line_parses_or_is_refused_cleanly(text):
    try:
        line = Line.parse(text.replace("\n", " "), 3)
    except PasswordFileError as e:
        assert str(e).startswith("line 3: ")
    else:
        assert line.account is None or line.account.user


@settings(max_examples=300)
@given(st.text(max_size=120))
def test_any_stored_hash_parses_or_is_refused_cleanly(text):
    try:
        check_hash(text)
    except PasswordFileError:
        pass


# RFC 7914, section 12: scrypt("password", "NaCl", N=1024, r=8, p=16, dkLen=64).
RFC7914 = bytes.fromhex(
    "fdbabe1c9d3472007856e7190d01e9fe7c6ad7cbc8237830e77376634b373162"
    "2eaf30d92e22a3886ff109279d9830dac727afb94a83ee6d8360cbdfa2cc0640")


def test_scrypt_matches_rfc_7914_on_this_runtime():
    from distcache.dcap.auth import _scrypt

    assert _scrypt("password", b"NaCl", 10, 8, 16, 64) == RFC7914


def test_the_fallback_for_a_hashlib_without_scrypt_matches_rfc_7914():
    """PyPy 3.9's hashlib has no scrypt; cryptography's stands in for it."""
    from distcache.dcap.auth import _openssl_scrypt

    assert _openssl_scrypt(b"password", b"NaCl", 1024, 8, 16, 64) == RFC7914
