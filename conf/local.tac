# A local deployment on embedded defaults: `twistd -n -y conf/local.tac` (or `make run`).
#
# dc_server keeps sessions behind var/dc_server.sock and logs its activity line.
# Everything is plain configuration; the services build their endpoints when started.
import os

from twisted.application import service

from distcache.server_tap import CacheServerService

os.makedirs("var", exist_ok=True)

application = service.Application("distcache-local")
CacheServerService(["UNIX:var/dc_server.sock"], sessions=512).setServiceParent(application)
