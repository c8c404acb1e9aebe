"""The shape every tool's service shares: plain configuration until it starts.

A service that can go into a tap file must pickle, and endpoints, factories and the
reactor do not.  So a tool's service keeps only its settings; its working parts (the
factories, and the child services that listen or connect) are built when it starts,
in ``privilegedStartService`` when twistd calls it, so that binding happens before
privileges are dropped.
"""

from __future__ import annotations

from twisted.application.service import MultiService
from twisted.logger import Logger

from distcache import __version__
from distcache.startup import EXPECTED, Refused, as_startup_error, install_excepthook

log = Logger()

#: the shape of a service's pickled configuration; a pickle of another is refused
CONFIG_FORMAT = 1
FORMAT_KEY = "_distcache_config_format"


class ConfiguredService(MultiService):
    """Subclasses implement ``build(reactor)``; attributes named in ``runtime`` are not pickled.

    A failure to start that is the operator's to fix (see ``distcache.startup``)
    leaves as a ``StartupError`` naming the program, the thing and the remedy.
    """

    #: the command this service is, in messages (dc_server, dcap-door, ...)
    program = "distcache"
    #: attributes made by ``build`` (or handed in for tests) that never go into a tap file
    runtime = ()

    def __init__(self, reactor=None):
        super().__init__()
        self._reactor = reactor
        self.built = False

    def __getstate__(self):
        state = super().__getstate__()
        state.update(services=[], namedServices={}, built=False, _reactor=None)
        for name in self.runtime:
            state[name] = None
        state[FORMAT_KEY] = CONFIG_FORMAT
        return state

    def __setstate__(self, state):
        found = state.get(FORMAT_KEY)
        if found != CONFIG_FORMAT:
            raise Refused(
                f"{self.program}: this pickled configuration has "
                f"{'no format mark' if found is None else f'format {found!r}'}; "
                f"distcache-twisted {__version__} reads format {CONFIG_FORMAT}: "
                f"write the tap file again with dc-mktap")
        state = dict(state)
        del state[FORMAT_KEY]
        self.__dict__.update(state)

    @property
    def reactor(self):
        if self._reactor is None:
            from twisted.internet import reactor
            return reactor
        return self._reactor

    def _ensure_built(self) -> None:
        if not self.built:
            self.build(self.reactor)
            self.built = True

    def _starting(self, step) -> None:
        try:
            step()
        except EXPECTED as e:
            install_excepthook()
            raise as_startup_error(self.program, e) from e

    def privilegedStartService(self) -> None:
        def step():
            self._ensure_built()
            MultiService.privilegedStartService(self)
        self._starting(step)

    def startService(self) -> None:
        def step():
            self._ensure_built()
            MultiService.startService(self)
        self._starting(step)
        log.info("{program} {version} started", program=self.program, version=__version__)
