"""The C tools' command lines, translated into twistd's."""

from __future__ import annotations

import os
import pwd

import pytest

from distcache.cflags import CommandLineError, twistd_argv


def test_foreground_by_default_with_no_pid_file():
    assert twistd_argv("dc_server", ["-listen", "UNIX:/x", "-sessions", "100"]) == [
        "--nodaemon", "--pidfile=", "dc_server", "--listen", "UNIX:/x", "--sessions", "100"]


def test_daemon_logs_to_a_file_unless_syslog_is_asked_for():
    argv = twistd_argv("dc_client", ["-daemon", "-pidfile", "/run/dc_client.pid",
                                     "-server", "IP:cache:9001"])
    assert argv == ["--logfile=" + os.path.abspath("dc_client.log"),
                    "--pidfile=/run/dc_client.pid", "dc_client", "--server", "IP:cache:9001"]
    argv = twistd_argv("dc_client", ["-daemon", "-syslog", "-server", "IP:cache:9001"])
    assert argv[:3] == ["--syslog", "--prefix", "dc_client"]
    argv = twistd_argv("dc_client", ["-daemon", "-logfile", "/var/log/x.log", "-server", "IP:c:1"])
    assert argv[0] == "--logfile=/var/log/x.log"


def test_user_becomes_numeric_uid_and_gid():
    me = pwd.getpwuid(os.getuid())
    for user in (me.pw_name, str(me.pw_uid)):
        argv = twistd_argv("dc_server", ["-user", user])
        assert argv[argv.index("--uid") + 1] == str(me.pw_uid)
        assert argv[argv.index("--gid") + 1] == str(me.pw_gid)
        assert argv[-1] == "dc_server"


def test_an_unknown_user_stops_before_twistd():
    with pytest.raises(CommandLineError, match="dc_server: -user: no such user"):
        twistd_argv("dc_server", ["-user", "no-such-user-here"])


def test_long_forms_pass_and_unknown_flags_or_words_are_named_as_typed():
    assert twistd_argv("dc_snoop", ["--listen", "UNIX:/a", "-server=UNIX:/b"])[2:] == [
        "dc_snoop", "--listen", "UNIX:/a", "--server", "UNIX:/b"]
    with pytest.raises(CommandLineError, match="dc_snoop: -x is not a dc_snoop flag"):
        twistd_argv("dc_snoop", ["--listen", "UNIX:/a", "-x"])
    with pytest.raises(CommandLineError, match="unexpected argument 'plain'"):
        twistd_argv("dc_snoop", ["plain"])


def test_a_trailing_flag_without_its_value_is_an_error():
    with pytest.raises(CommandLineError, match="dc_server: -pidfile needs a value"):
        twistd_argv("dc_server", ["-pidfile"])
    with pytest.raises(CommandLineError, match="dc_server: -daemon takes no value"):
        twistd_argv("dc_server", ["-daemon=yes"])
