"""Composition of the supervisor process (``[server] workers`` > 1).

It does the start-up work once, checks every setting by building the server (which it
then does not serve with), binds the listeners, and supervises the worker processes
(osp_server.workers.child) that adopt them.
"""

from __future__ import annotations

import os
import sys
from typing import cast

from twisted.application.reactors import getReactorTypes
from twisted.application.service import MultiService
from twisted.logger import Logger

from osp_server.app import (
    RENEWAL_CHECK_SECONDS,
    Core,
    CoreService,
    PeriodicRenewal,
    assemble_or_release,
    checked_components,
    prepare,
    warn_about_settings,
)
from osp_server.config import Config
from osp_server.endpoints import StartupError, endpoint_for, listener_descriptions
from osp_server.reactor import IOSPReactor, ISupervisorReactor
from osp_server.services import ProcessService
from osp_server.storage.changes import RELOAD
from osp_server.workers.role import HandOverError, encode_config
from osp_server.workers.sockets import (
    SharedListenerService,
    SharedSocketError,
    check_shareable,
    offset_port,
)
from osp_server.workers.supervisor import WorkerLaunch, WorkerSupervisor

log = Logger()

FIRST_INHERITED_FD = 3  # after stdin, stdout and stderr
EXIT_WORKERS_FAILED = 3
"""twistd's exit status when a worker kept failing to start (WorkerSupervisor)."""


def build_supervisor_service(config: Config, reactor: ISupervisorReactor) -> MultiService:
    """The twistd process with ``[server] workers`` > 1: start-up work done once (CA,
    migrations, certificates, every setting checked by building the server), the
    listeners bound here, and :class:`~osp_server.workers.supervisor.WorkerSupervisor`
    running the workers that serve on them.  SIGHUP renews the TLS material here,
    then is forwarded to every worker, which re-reads the files."""
    osp_reactor = cast(IOSPReactor, reactor)
    core = prepare(config, osp_reactor)
    return assemble_or_release(core, lambda: _assemble_supervisor(core, config, reactor))


def _assemble_supervisor(core: Core, config: Config, reactor: ISupervisorReactor) -> MultiService:
    osp_reactor = cast(IOSPReactor, reactor)
    components = checked_components(core)
    warn_about_settings(config)
    top = MultiService()
    core_service = CoreService(components, serves=False)
    core_service.setName("core")
    core_service.setServiceParent(top)
    cfg = config.listeners
    # Metrics are not shared: each worker listens on a port of its own (below).
    descriptions = [(n, d) for n, d in listener_descriptions(config) if n != "metrics"]
    try:
        handover = encode_config(config)
    except HandOverError as e:
        raise StartupError(f"{config.source}: {e}") from None
    reactor_name = installed_reactor_name(reactor)
    shared: list[SharedListenerService] = []
    metrics: list[SharedListenerService] = []

    def launch(index: int, accept_when_ready: bool) -> WorkerLaunch:
        return _launch(config, reactor_name, handover, index, shared, metrics, accept_when_ready)

    def give_up() -> None:
        # twistd exits with status 0 after a stop; a supervisor whose workers cannot
        # start must fail instead, so that systemd (Restart=on-failure) and the operator
        # see it.  The exit comes after the shutdown: workers stopped, sockets closed,
        # every log line written (the log observers flush each event).
        osp_reactor.addSystemEventTrigger("after", "shutdown", os._exit, EXIT_WORKERS_FAILED)
        osp_reactor.stop()

    supervisor = WorkerSupervisor(reactor, config.workers, launch, give_up=give_up)
    for name, description in descriptions:
        shared.append(_shared_listener(config, osp_reactor, name, description, top, supervisor))
    if cfg.metrics:
        for index in range(config.workers):
            try:
                description = offset_port(cfg.metrics, index)
            except SharedSocketError as e:
                raise StartupError(f"{config.source}: listeners.metrics: {e}") from None
            metrics.append(
                _shared_listener(
                    config, osp_reactor, f"metrics-{index}", description, top, supervisor
                )
            )
    supervisor.setName("workers")
    supervisor.setServiceParent(top)

    def reload(why: str = "SIGHUP") -> None:
        log.info("{why}: reloading TLS material, then the workers'", why=why)
        components.reload_tls().addBoth(lambda _: supervisor.signal_all("HUP"))

    # osp-admin reload and the periodic renewal check: renewed here, then re-read by
    # every worker, as on SIGHUP.  (The supervisor serves nothing: access changes are
    # the workers' own watchers' business.)
    components.change_watcher.subscribe(RELOAD, lambda: reload("osp-admin reload"))
    components.change_watcher.setServiceParent(top)
    PeriodicRenewal(
        osp_reactor,
        lambda: components.reload_tls().addBoth(lambda _: supervisor.signal_all("HUP")),
        interval=RENEWAL_CHECK_SECONDS,
    ).setServiceParent(top)

    process = ProcessService(osp_reactor, reload=reload)
    process.setName("process")
    process.setServiceParent(top)
    log.info(
        "supervising {count} worker processes on the listeners below",
        count=config.workers,
    )
    return top


def _launch(
    config: Config,
    reactor_name: str | None,
    handover: bytes,
    index: int,
    shared: list[SharedListenerService],
    metrics: list[SharedListenerService],
    accept_when_ready: bool = False,
) -> WorkerLaunch:
    """How worker ``index`` starts: its command line and the sockets it inherits (the
    shared listeners, and its own metrics listener); ``accept_when_ready`` as in
    :class:`osp_server.workers.role.WorkerRole`."""
    mine = [*shared, *([metrics[index]] if metrics else [])]
    args = [
        sys.executable,
        # -P: not the working directory first on sys.path (as ``-m`` would put it),
        # so workers import the code the supervisor runs, never a stray file there.
        "-P",
        "-m",
        "osp_server.workers.child",
        f"--index={index}",
        f"--count={config.workers}",
    ]
    if reactor_name:
        args.append(f"--reactor={reactor_name}")
    if accept_when_ready:
        args.append("--accept-when-ready")
    child_fds: dict[int, int | str] = {0: "w", 1: "r", 2: "r"}
    for offset, listener in enumerate(mine):
        fd = FIRST_INHERITED_FD + offset
        child_fds[fd] = listener.fileno()
        name = "metrics" if listener in metrics else listener.name
        args.append(f"--listener={name}={fd}")
    return WorkerLaunch(
        executable=sys.executable,
        args=args,
        env=dict(os.environ),
        child_fds=child_fds,
        stdin=handover,
    )


def _shared_listener(
    config: Config,
    reactor: IOSPReactor,
    name: str,
    description: str,
    top: MultiService,
    supervisor: WorkerSupervisor,
) -> SharedListenerService:
    key = "metrics" if name.startswith("metrics-") else name
    try:
        check_shareable(description)
    except SharedSocketError as e:
        raise StartupError(f"{config.source}: listeners.{key.replace('-', '_')}: {e}") from None
    endpoint = endpoint_for(config, reactor, key, description)
    listener = SharedListenerService(
        reactor, description, endpoint, close_after=supervisor.when_stopped
    )
    listener.setName(name)
    listener.setServiceParent(top)
    return listener


def installed_reactor_name(reactor: object) -> str | None:
    """The ``twistd --reactor`` short name of ``reactor``, so workers run the same one
    (None: the platform default)."""
    module = type(reactor).__module__
    for installer in getReactorTypes():
        if getattr(installer, "moduleName", None) == module:
            return str(installer.shortName)
    return None
