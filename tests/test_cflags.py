"""The C tools' command lines, translated into twistd's."""

from __future__ import annotations

import os
import pwd

import pytest

from distcache.cflags import twistd_argv


def test_foreground_by_default_with_no_pid_file():
    assert twistd_argv("dc_server", ["-listen", "UNIX:/x", "-sessions", "100"]) == [
        "--nodaemon", "--pidfile=", "dc_server", "--listen", "UNIX:/x", "--sessions", "100"]


def test_daemon_logs_to_syslog_under_the_tool_name():
    argv = twistd_argv("dc_client", ["-daemon", "-pidfile", "/run/dc_client.pid",
                                     "-server", "IP:cache:9001"])
    assert argv == ["--syslog", "--prefix", "dc_client", "--pidfile=/run/dc_client.pid",
                    "dc_client", "--server", "IP:cache:9001"]


def test_user_becomes_numeric_uid_and_gid():
    me = pwd.getpwuid(os.getuid())
    for user in (me.pw_name, str(me.pw_uid)):
        argv = twistd_argv("dc_server", ["-user", user])
        assert argv[argv.index("--uid") + 1] == str(me.pw_uid)
        assert argv[argv.index("--gid") + 1] == str(me.pw_gid)
        assert argv[-1] == "dc_server"


def test_an_unknown_user_stops_before_twistd():
    with pytest.raises(SystemExit, match="no such user"):
        twistd_argv("dc_server", ["-user", "no-such-user-here"])


def test_words_pass_through_and_double_dashes_stay():
    assert twistd_argv("dc_snoop", ["--listen", "UNIX:/a", "-x", "plain"])[3:] == [
        "--listen", "UNIX:/a", "-x", "plain"]


def test_a_trailing_flag_without_its_value_is_left_to_the_plugin():
    assert twistd_argv("dc_server", ["-pidfile"])[-1] == "--pidfile"
