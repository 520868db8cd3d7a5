"""Is a staged supervisor config valid? Run as the project user by the virtualenv's Python:
supervisor's own parser decides, before the file replaces the live one.

Arguments: KIND:PATH, KIND `main` (a whole supervisord.conf) or `programs` (a program file of NAME-programs.d).
"""
import os
import sys
import tempfile

from supervisor.options import ServerOptions

failed = False
for arg in sys.argv[1:]:
    kind, _, path = arg.partition(":")
    wrapper = None
    try:
        if kind == "programs":
            # a program file is only a fragment: check it inside a minimal main config
            fd, wrapper = tempfile.mkstemp(suffix=".conf")
            with os.fdopen(fd, "w") as f:
                f.write(f"[supervisord]\n[include]\nfiles = {path}\n")
            target = wrapper
        else:
            target = path
        options = ServerOptions()
        options.configfile = target
        options.process_config(do_usage=False)
    except (ValueError, OSError) as exc:
        failed = True
        print(f"{path}: {exc}", file=sys.stderr)
    finally:
        if wrapper:
            os.unlink(wrapper)
sys.exit(1 if failed else 0)
