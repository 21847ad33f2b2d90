"""Old name of :mod:`bounds.lirpa_compat`, kept only until the Makefile's install check
imports the new name (issue #10); nothing in the project imports it."""

from bounds.lirpa_compat import apply_shims, import_auto_lirpa

__all__ = ["apply_shims", "import_auto_lirpa"]
