"""Twisted plugin: makes ``twistd osp`` available (imports osp_server.tap lazily)."""

from twisted.application.service import ServiceMaker

osp = ServiceMaker("osp-server", "osp_server.tap", "OSP clearinghouse and enrollment server", "osp")
