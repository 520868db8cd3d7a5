"""fabcelery: `fab deploy`, `fab status` ... (see README.md; `fab --list`)."""

from tasks.cli import ns  # noqa: F401
