"""Vendored schemas for ``mtkd cluster validate`` (see README.md in this folder)."""
