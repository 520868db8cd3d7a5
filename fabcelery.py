"""In this checkout, `import fabcelery` gives the package that `pip install` installs under
that name: the folder tasks/ (pyproject.toml maps one to the other). It is how `make venv`'s
`fabcelery` command and a fabfile's `from fabcelery import ns` work here without installing;
`pip install .` does not install this file.
"""

import importlib.util
import sys
from pathlib import Path

_init = Path(__file__).resolve().with_name("tasks") / "__init__.py"
_spec = importlib.util.spec_from_file_location(__name__, _init, submodule_search_locations=[str(_init.parent)])
_package = importlib.util.module_from_spec(_spec)
sys.modules[__name__] = _package
_spec.loader.exec_module(_package)
