"""fabcelery: `fab deploy`, `fab status` ... (see README.md; `fab --list`)."""

import sys

# Invoke turns off writing bytecode while it loads this file (so that no fabfile.pyc
# lies around); without cached bytecode our modules are compiled again by every `fab`
# run, some 50 ms of its start-up.
sys.dont_write_bytecode = False

from tasks.cli import ns  # noqa: E402, F401
