# A local deployment on embedded defaults: `make run`, or `twistd -n -y conf/local.tac`.
#
# Everything lives under ./var of the directory it is started from:
#   dc_server  on UNIX:var/dc_server.sock (its activity line goes to the log)
#   dc_client  on UNIX:var/scache, sharing one connection to that dc_server
#   dcap-door  on 127.0.0.1:22125, namespace and pool in var/dcap, clients may write and
#              overwrite, and the uid/gid that local clients send are believed
#              (--trust-client-uid 127.0.0.0/8: the door is reachable from this machine only);
#              /pnfs/local/tmp exists and anyone may write there (conf/try-local.sh)
# DCAP_LISTEN overrides the door's address (e.g. tcp:22126:interface=127.0.0.1).
import io
import os

from twisted.application import service
from twisted.internet import reactor

from distcache import client_tap, dcap_tap, server_tap
from distcache.dcap import admin

DCAP_ROOT = os.path.join("var", "dcap")
#: The namespace directories the README's examples use, with their modes.
DIRECTORIES = (("/pnfs/local", "755"), ("/pnfs/local/tmp", "1777"))


def plugin(tap, *argv):
    """A plugin's service from its own command line, exactly as twistd would build it."""
    options = tap.Options()
    options.parseOptions(list(argv))
    return tap.makeService(options)


def make_directories(root):
    """Create the examples' directories (owned by whoever runs the deployment) once."""
    owner = "%d:%d" % (os.getuid(), os.getgid())
    for path, mode in DIRECTORIES:
        out, err = io.StringIO(), io.StringIO()
        d = admin.run(["--root", root, "mkdir", "-p", path, "--mode", mode, "--owner", owner],
                      reactor, out, err)
        failed = []
        d.addCallback(lambda code: code and failed.append(err.getvalue().strip()))
        if failed and "exists" not in failed[0].lower():
            raise SystemExit("conf/local.tac: cannot create %s in %s: %s" % (path, root, failed[0]))


os.makedirs(DCAP_ROOT, exist_ok=True)
make_directories(DCAP_ROOT)
application = service.Application("distcache-local")
for part in (
    plugin(server_tap, "--listen", "UNIX:var/dc_server.sock"),
    plugin(client_tap, "--listen", "UNIX:var/scache", "--server", "UNIX:var/dc_server.sock",
           "--retry", "1000"),
    plugin(dcap_tap, "--listen", os.environ.get("DCAP_LISTEN", "tcp:22125:interface=127.0.0.1"),
           "--root", DCAP_ROOT, "--anonymous-access", "FULL", "--allow-truncate",
           "--trust-client-uid", "127.0.0.0/8,::1/128"),
):
    part.setServiceParent(application)
