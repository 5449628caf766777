"""Worker processes (``[server] workers = N``): one supervisor, N servers.

The supervisor is the ``twistd osp`` process.  It does the start-up work once (CA,
migrations, TLS and token-signer material), binds every listener, and runs N worker
processes (:mod:`osp_server.workers.child`) that adopt those sockets and serve; the
kernel spreads connections between them.  It relays their logs, restarts a worker
that dies, forwards SIGHUP after renewing the TLS material itself, and stops them on
shutdown.  Workers stop by themselves when the supervisor disappears (their stdin
closes).
"""
