"""The reactor the server is built on, as a typed interface.

Components ask for the narrowest Twisted interface they use (``IReactorTime`` for a
poll loop); the composition root and the pieces that hand work to threads take
:class:`IOSPReactor`.  The global reactor provides it, and so does the in-memory
reactor the tests build the server on, which is what lets the type checker see a test
reactor that lacks something the server calls.
"""

from __future__ import annotations

from typing import cast

from twisted.internet.interfaces import (
    IReactorCore,
    IReactorProcess,
    IReactorSocket,
    IReactorSSL,
    IReactorTCP,
    IReactorThreads,
    IReactorTime,
)


class IOSPReactor(IReactorCore, IReactorTime, IReactorThreads, IReactorTCP, IReactorSSL):
    """Run loop and shutdown, timers, hand-off from worker threads, TCP and TLS ports."""


class ISupervisorReactor(IReactorProcess, IReactorTime):
    """What the worker supervisor uses: child processes and timers."""


class IWorkerReactor(IOSPReactor, IReactorSocket):
    """A worker process's reactor: the server's, plus adopting inherited sockets."""


def global_reactor() -> IOSPReactor:
    """The installed global reactor (imported here, at call time, so that ``twistd
    --reactor`` has chosen it first)."""
    from twisted.internet import reactor

    return cast(IOSPReactor, reactor)
