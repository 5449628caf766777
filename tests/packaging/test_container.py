"""The container files (Dockerfile, compose.yaml, etc/docker/osp.toml) agree with the
code: the image's config loads and its listeners parse, the ports it publishes are the
ones it listens on, and it runs the command the systemd unit runs.

No Docker engine runs in CI; docs/operations.md says how the image was checked."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from twisted.internet.testing import MemoryReactor

from osp_server.config import load_config
from osp_server.endpoints import check_endpoints, listener_descriptions

REPO = Path(__file__).resolve().parents[2]


def _instructions() -> list[tuple[str, str]]:
    """(instruction, arguments) of the Dockerfile, continuation lines joined."""
    text = (REPO / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    found = []
    for line in joined.splitlines():
        if line.strip():
            instruction, _, arguments = line.strip().partition(" ")
            found.append((instruction.upper(), arguments.strip()))
    return found


def test_the_image_config_loads_and_its_listeners_parse() -> None:
    config = load_config(REPO / "etc" / "docker" / "osp.toml")
    check_endpoints(config, MemoryReactor())  # type: ignore[arg-type]
    assert config.data_dir == Path("/var/lib/osp-server")
    # No password in the file: libpq reads $PGPASSWORD, which compose.yaml sets.
    assert config.database.url == "postgresql://osp@db:5432/osp"
    volumes = [a for i, a in _instructions() if i == "VOLUME"]
    assert volumes == ['["/var/lib/osp-server"]']


def test_published_ports_are_the_ports_it_listens_on() -> None:
    config = load_config(REPO / "etc" / "docker" / "osp.toml")
    listening = {
        name: int(re.fullmatch(r"tcp:(\d+)", description).group(1))  # type: ignore[union-attr]
        for name, description in listener_descriptions(config)
        if name in ("http", "https")
    }
    exposed = {int(p) for i, a in _instructions() if i == "EXPOSE" for p in a.split()}
    assert exposed == set(listening.values())
    compose = (REPO / "compose.yaml").read_text()
    published = {int(m) for m in re.findall(r'- "(\d+):\1"', compose)}
    assert published == exposed
    # The database password must be given; never a default.
    assert compose.count("${OSP_DB_PASSWORD:?") == 2


def test_the_image_runs_what_the_systemd_unit_runs() -> None:
    unit = (REPO / "etc" / "osp-server.service").read_text()
    (exec_start,) = re.findall(r"^ExecStart=(.*)$", unit, flags=re.MULTILINE)
    unit_argv = shlex.split(exec_start)
    (command,) = [a for i, a in _instructions() if i == "CMD"]
    image_argv = json.loads(command)
    # The unit names the venv's twistd and its config file; the image has the venv on
    # PATH and $OSP_CONFIG.
    assert Path(unit_argv[0]).name == image_argv[0] == "twistd"
    assert unit_argv[1 : unit_argv.index("--config")] == image_argv[1:]
    env = next(a for i, a in _instructions() if i == "ENV")
    assert "OSP_CONFIG=/etc/osp-server/osp.toml" in env and "PATH=/opt/osp-server/bin:" in env
    user = [a for i, a in _instructions() if i == "USER"]
    assert user == ["osp"]
