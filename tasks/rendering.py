"""Rendering the templates (Jinja2): where they are looked up, the one environment per set of
directories, and the error that names the template and line."""

from __future__ import annotations

import functools
import os
import shlex
from pathlib import Path

import jinja2

from .inventory import InventoryError
from .redis_broker import redis_quote

# installed: the package's own templates/ (package data); in the checkout: templates/ beside tasks/
_HERE = Path(__file__).resolve().parent
TEMPLATES = _HERE / "templates" if (_HERE / "templates").is_dir() else _HERE.parent / "templates"
TEMPLATES_ENV = "FABCELERY_TEMPLATES"


class TemplateError(Exception):
    """A template could not be rendered; the message names the template and line."""


def _environment(template_dir: Path | list[Path]) -> jinja2.Environment:
    dirs = template_dir if isinstance(template_dir, list) else [template_dir]
    return _cached_environment(tuple(str(d) for d in dirs))


@functools.lru_cache(maxsize=8)
def _cached_environment(template_dirs: tuple[str, ...]) -> jinja2.Environment:
    """One environment per set of directories, so each template is compiled once per run,
    not once per host and file (Jinja2 keeps the compiled templates in its environment)."""
    env = jinja2.Environment(
        # several directories: the first that has a template wins (FABCELERY_TEMPLATES, then templates/)
        loader=jinja2.FileSystemLoader(list(template_dirs)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["pyrepr"] = repr
    env.filters["redis_quote"] = redis_quote
    env.filters["shquote"] = shlex.quote   # values in a shell script on the server (logrotate's postrotate)
    return env


def template_dirs(environ: dict | None = None) -> list[Path]:
    """Where templates are looked up: FABCELERY_TEMPLATES (if set) first, then templates/.

    A file in that directory wins over the one of the same name in templates/, so a
    project can change one template (or a test can break one) and keep the others.
    """
    named = (os.environ if environ is None else environ).get(TEMPLATES_ENV)
    if not named:
        return [TEMPLATES]
    path = Path(named).expanduser()
    if not path.is_dir():
        raise InventoryError(f"{TEMPLATES_ENV}={named}: no such directory (it names a directory of templates "
                             f"that win over the ones in {TEMPLATES}). Nothing was changed.")
    return [path, TEMPLATES]


def render(template: str, context: dict, template_dir: Path = TEMPLATES) -> str:
    try:
        return _environment(template_dir).get_template(template).render(context)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"template {exc.name or template}, line {exc.lineno}: {exc.message}") from None
    except jinja2.UndefinedError as exc:
        raise TemplateError(f"template {template}: {exc.message}") from None
    except jinja2.TemplateNotFound as exc:
        raise TemplateError(f"template {exc.name} not found in {template_dir}") from None
