"""dc_resume's arguments, pair schedule and verdict (the handshakes are in the Apache tests)."""

import pytest
from twisted.python import usage

from distcache import resume
from distcache.resume import PairResult, Target


def test_targets():
    assert resume.parse_targets("a:1,[::1]:443") == [Target("a", 1), Target("::1", 443)]
    assert str(Target("::1", 443)) == "[::1]:443"
    for bad in ("a", "a:b", ":1", "a:0", "a:70000"):
        with pytest.raises(usage.UsageError):
            resume.parse_targets(bad)


def test_every_ordered_pair_and_a_lone_server_with_itself():
    a, b, c = Target("a", 1), Target("b", 1), Target("c", 1)
    assert resume.pairs([a]) == [(a, a)]
    assert sorted(resume.pairs([a, b, c])) == sorted(
        [(a, b), (a, c), (b, a), (b, c), (c, a), (c, b)])


def result(tried, reused):
    r = PairResult()
    r.tried, r.reused = tried, reused
    return r


def test_verdicts():
    assert resume.verdict({1: result(10, 10), 2: result(10, 9)}) == (
        True, "this farm shares sessions")
    assert resume.verdict({1: result(10, 10), 2: result(10, 0)}) == (
        False, "this farm shares sessions only partly")
    assert resume.verdict({1: result(10, 0)}) == (False, "this farm does not share sessions")
    assert resume.verdict({1: result(0, 0)})[0] is False


@pytest.mark.parametrize("argv", [[], ["a:1", "-n", "1"], ["a:1", "--tls1.2", "--tls1.3"],
                                  ["a:1", "-n", "x"]])
def test_bad_command_lines_exit_2(argv, capsys):
    assert resume.main(argv) == 2
    assert "dc_resume:" in capsys.readouterr().err


def test_unreachable_servers_give_no_sharing(capsys):
    from cache_support import free_tcp_port
    port = free_tcp_port()
    assert resume.main([f"127.0.0.1:{port}", "-n", "4", "--timeout", "1"]) == 1
    out = capsys.readouterr().out
    assert "handshake with" in out and "failed" in out
    assert "verdict: no session could be offered" in out
