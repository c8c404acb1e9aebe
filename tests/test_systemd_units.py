"""conf/systemd/ is one consistent set, and systemd itself accepts it."""

import configparser
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNITS = ROOT / "conf" / "systemd"
INSTALLED_TWISTD = "/opt/distcache-twisted/bin/twistd"


def unit(name):
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(UNITS / name)
    return parser


def exec_start(name):
    return shlex.split(unit(name)["Service"]["ExecStart"])


def plugin_argv(name):
    """The plugin name and its options from a service's twistd command line."""
    argv = exec_start(name)
    for i, word in enumerate(argv):
        if word in ("dc_server", "dc_client", "dc_snoop", "dcap-door"):
            return word, argv[i + 1:]
    raise AssertionError(f"{name}: no plugin in {argv}")


def test_the_set():
    assert sorted(os.listdir(UNITS)) == [
        "dc_client.service", "dc_client.socket", "dc_server.service", "dc_server.socket",
        "dcap-door.service", "dcap-door.socket"]


@pytest.mark.parametrize("name", ["dc_server.service", "dc_client.service", "dcap-door.service"])
def test_services_run_an_absolute_twistd_on_a_socket_systemd_holds(name):
    argv = exec_start(name)
    assert argv[0] == INSTALLED_TWISTD  # never twistd from systemd's PATH, nor /usr/bin/env
    assert "--nodaemon" in argv and "--logfile=-" in argv
    plugin, options = plugin_argv(name)
    listen = options[options.index("--listen") + 1]
    assert listen.startswith("systemd:")
    socket_unit = name.replace(".service", ".socket")
    assert socket_unit in unit(name)["Unit"]["Requires"]
    # the options are the plugin's own, as it parses them
    from distcache.cflags import plugin_options
    plugin_options(plugin).parseOptions(options)
    service = unit(name)["Service"]
    assert service.get("User") and service.get("User") != "root"


def test_dc_client_uses_the_address_dc_servers_socket_provides():
    _, options = plugin_argv("dc_client.service")
    server = options[options.index("--server") + 1]
    assert server == "UNIX:" + unit("dc_server.socket")["Socket"]["ListenStream"]


@pytest.mark.parametrize("name", ["dc_server.socket", "dc_client.socket"])
def test_unix_sockets_are_limited_to_a_group(name):
    sock = unit(name)["Socket"]
    assert sock["ListenStream"].startswith("/run/")
    assert sock["SocketMode"] == "0660" and sock["SocketGroup"] == "distcache"


def test_the_door_keeps_its_state_where_systemd_made_it():
    service = unit("dcap-door.service")["Service"]
    assert service["User"] == "dcap" and service["StateDirectory"] == "dcap"
    _, options = plugin_argv("dcap-door.service")
    assert options[options.index("--root") + 1] == "/var/lib/dcap"
    assert service["WorkingDirectory"] == "/var/lib/dcap"
    port = int(unit("dcap-door.socket")["Socket"]["ListenStream"])
    assert port <= 32767  # dccp 2.47 cannot reach higher ports
    # ListenStream=PORT is an IPv6 (dual-stack) socket: the door must expect one
    assert "systemd:domain=INET6:index=0" in options


def test_systemd_accepts_the_units(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here (Debian: apt-get install systemd)")
    twistd = Path(sys.executable).parent / "twistd"
    if not twistd.exists():
        pytest.skip(f"no twistd next to {sys.executable} to stand in for {INSTALLED_TWISTD}")
    for path in UNITS.iterdir():
        text = path.read_text().replace(INSTALLED_TWISTD, str(twistd))
        (tmp_path / path.name).write_text(text)
    names = sorted(str(p) for p in tmp_path.iterdir())
    out = subprocess.run([analyze, "verify"] + names, capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    complaints = [line for line in (out.stdout + out.stderr).splitlines()
                  if str(tmp_path) in line or "Unknown" in line or "Refusing" in line]
    assert out.returncode == 0 and not complaints, out.stdout + out.stderr
