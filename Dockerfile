# osp-server with the system Python of Debian 12 (3.11), as a non-root user.
#
#   docker build -t osp-server .
#   docker compose up -d          # with PostgreSQL: see compose.yaml and docs/operations.md
#
# The data directory (/var/lib/osp-server: CA key, TLS and token keys, certificate
# journal, and the SQLite database when no PostgreSQL URL is configured) is a volume:
# keep it, and back it up (osp-admin backup).

FROM debian:bookworm-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/osp-server
COPY pyproject.toml README.md LICENSE /src/
COPY osp_server /src/osp_server
COPY twisted /src/twisted
# Twisted's plugin cache is written now: the service user cannot write there.
RUN /opt/osp-server/bin/pip install --no-cache-dir --disable-pip-version-check /src \
    && /opt/osp-server/bin/python -c \
        "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 999 --user-group --home-dir /var/lib/osp-server \
        --shell /usr/sbin/nologin osp \
    && install -d -m 0700 -o osp -g osp /var/lib/osp-server
COPY --from=build /opt/osp-server /opt/osp-server
COPY etc/docker/osp.toml /etc/osp-server/osp.toml
ENV PATH=/opt/osp-server/bin:$PATH \
    OSP_CONFIG=/etc/osp-server/osp.toml \
    PYTHONDONTWRITEBYTECODE=1
USER osp
WORKDIR /var/lib/osp-server
VOLUME ["/var/lib/osp-server"]
# 5045: plain HTTP (getcacert, CRL, health); 1443: HTTPS (enrollment, OSP).
EXPOSE 5045 1443
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5045/ready', timeout=4)"]
STOPSIGNAL SIGTERM
CMD ["twistd", "-n", "--pidfile=", "--logger", "osp_server.logging.json_stdout", "osp"]
