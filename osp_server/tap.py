"""``twistd osp``: command-line options and makeService; the wiring lives in app.py."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, cast

from twisted.application.service import IService
from twisted.python import usage

from osp_server.config import ConfigError, find_config, load_config


class Options(usage.Options):
    """Options of ``twistd osp``."""

    optParameters: ClassVar[list[list[str | None]]] = [
        [
            "config",
            "c",
            None,
            "Path of the TOML configuration file (default: $OSP_CONFIG, ./osp.toml, "
            "/etc/osp-server/osp.toml, else the built-in defaults).",
        ],
        ["data-dir", "d", None, "Override [server] data_dir."],
    ]

    def postOptions(self) -> None:
        """Load and check the configuration now, so errors come before daemonizing."""
        path = find_config(Path(self["config"]) if self["config"] else None)
        try:
            config = load_config(path)
        except ConfigError as e:
            # One line naming the key and the file: twistd prints its whole usage
            # block after a UsageError, which buries the one line that matters.
            raise SystemExit(f"osp-server: {e}") from None
        if self["data-dir"]:
            from osp_server.config import parse_config

            if path is not None:
                raise usage.UsageError(
                    "--data-dir is for the built-in defaults; set [server] data_dir in the config"
                )
            config = parse_config(
                {"server": {"data_dir": str(Path(self["data-dir"]).resolve())}},
                source="<command line>",
                base=Path.cwd(),
            )
        self["loaded_config"] = config


def makeService(options: Options) -> IService:
    """Build the server (blocking start-up work happens here, before the reactor runs)."""
    from osp_server.app import build_process_service
    from osp_server.endpoints import StartupError
    from osp_server.reactor import ISupervisorReactor, global_reactor
    from osp_server.workers.composition import build_supervisor_service

    config = options["loaded_config"]
    reactor = global_reactor()
    try:
        service: IService
        if config.workers > 1:
            service = build_supervisor_service(config, cast(ISupervisorReactor, reactor))
        else:
            service = build_process_service(config, reactor)
        return service
    except StartupError as e:
        raise SystemExit(f"osp-server: {e}") from None
