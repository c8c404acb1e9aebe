# A local deployment on embedded defaults: `make run`, or `twistd -n -y conf/local.tac`.
#
# Everything lives under ./var of the directory it is started from:
#   dc_server  on UNIX:var/dc_server.sock (its activity line goes to the log)
#   dc_client  on UNIX:var/scache, sharing one connection to that dc_server
#   dcap-door  on 127.0.0.1:22125, namespace and pool in var/dcap, anonymous clients
#              may write (the door is reachable from this machine only)
# DCAP_LISTEN overrides the door's address (e.g. tcp:22126:interface=127.0.0.1).
import os

from twisted.application import service

from distcache import client_tap, dcap_tap, server_tap


def plugin(tap, *argv):
    """A plugin's service from its own command line, exactly as twistd would build it."""
    options = tap.Options()
    options.parseOptions(list(argv))
    return tap.makeService(options)


os.makedirs("var", exist_ok=True)
application = service.Application("distcache-local")
for part in (
    plugin(server_tap, "--listen", "UNIX:var/dc_server.sock"),
    plugin(client_tap, "--listen", "UNIX:var/scache", "--server", "UNIX:var/dc_server.sock",
           "--retry", "1000"),
    plugin(dcap_tap, "--listen", os.environ.get("DCAP_LISTEN", "tcp:22125:interface=127.0.0.1"),
           "--root", "var/dcap", "--anonymous-access", "FULL"),
):
    part.setServiceParent(application)
