"""twistd plugins of the distcache suite; each names its tap module, imported lazily."""

from twisted.application.service import ServiceMaker

dc_server = ServiceMaker(
    "distcache server", "distcache.server_tap",
    "The distcache session cache server (dc_server).", "dc_server")

dc_client = ServiceMaker(
    "distcache client proxy", "distcache.client_tap",
    "The local distcache proxy sharing one server connection (dc_client).", "dc_client")

dc_snoop = ServiceMaker(
    "distcache traffic analyser", "distcache.snoop_tap",
    "A transparent proxy logging every distcache message (dc_snoop).", "dc_snoop")
