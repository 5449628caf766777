"""Backup and restore: the archive format and the operations behind ``osp-admin``."""
