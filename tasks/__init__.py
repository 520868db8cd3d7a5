"""fabcelery: Fabric tasks that deploy and run a supervised Celery cluster.

Installed, this package is `fabcelery` (in the repository its folder is tasks/):

    from fabcelery import ns      # the tasks, for a fabfile.py of your own (README.md)
"""

__version__ = "0.2.0"   # the release: pyproject.toml reads it from here; CHANGELOG.md says what each one changes


def __getattr__(name: str):
    # `from fabcelery import ns` loads the tasks (and Fabric) only when asked for: the rest of
    # the package (tasks.inventory, tasks.api, ...) is imported without them
    if name == "ns":
        from .cli import ns

        return ns
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
