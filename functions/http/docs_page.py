"""The interactive API docs: Swagger UI rendering the generated ``/openapi.json``, every file
served from this origin (no CDN: the page works offline and loads nothing from elsewhere).

Swagger UI comes from the locked ``swagger-ui-py`` package (Swagger UI 5.24.2, which renders
OpenAPI 3.1), read where it is installed, never copied into this repository. Only the page and
its start-up script are ours (``docs/``). The page's Content-Security-Policy admits exactly what
Swagger UI needs from this origin.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

__all__ = ["DOCS_ASSETS", "DOCS_PAGE", "DOCS_POLICY", "DocsAsset"]


def _swagger_ui_files() -> Path:
    # Located without importing the package: its __init__ imports Jinja2 and PyYAML for the
    # web-framework integrations, none of which this service uses.
    spec = find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the swagger-ui-py package is not installed (see uv.lock)")
    return Path(spec.submodule_search_locations[0]) / "static"


@dataclass(frozen=True, slots=True)
class DocsAsset:
    path: Path
    media_type: str


_OURS = Path(__file__).resolve().parent / "docs"
_SWAGGER_UI = _swagger_ui_files()

DOCS_PAGE = (_OURS / "index.html").read_bytes()

# What the page loads, by the name it uses under /docs/.
DOCS_ASSETS = {
    "swagger-ui-bundle.js": DocsAsset(_SWAGGER_UI / "swagger-ui-bundle.js", "text/javascript"),
    "swagger-ui.css": DocsAsset(_SWAGGER_UI / "swagger-ui.css", "text/css"),
    "favicon-32x32.png": DocsAsset(_SWAGGER_UI / "favicon-32x32.png", "image/png"),
    "swagger-initializer.js": DocsAsset(_OURS / "swagger-initializer.js", "text/javascript"),
}

DOCS_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",  # the bundle and our initializer; no inline script, no eval
        "style-src 'self'",
        "img-src 'self' data:",  # swagger-ui.css draws its icons as data: URIs
        "connect-src 'self'",  # /openapi.json and the requests of "Try it out"
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",  # not to be framed (clickjacking)
    )
)
