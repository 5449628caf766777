"""Device-side tools, apart from the server: :mod:`osp_server.client.enroll` is ``osp-enroll``.

Nothing here imports Twisted or the server's services and storage; the client shares
only the TEP codec (:mod:`osp_server.enrollment.wire`) and the PKI helpers
(:mod:`osp_server.pki.der`, :mod:`osp_server.pki.files`) with the server.
"""
