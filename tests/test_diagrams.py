"""The architecture diagrams: each committed SVG was rendered from its PlantUML source as it is
now, by the pinned PlantUML, and is shown in the docs.

PlantUML writes the source it rendered into the SVG (``<?plantuml-src …?>``: deflate, then its
own base64 alphabet), so the check needs no Java and compares text, not pixels.
"""

from __future__ import annotations

import base64
import re
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DIAGRAMS = ROOT / "docs" / "architecture"
SOURCES = sorted(DIAGRAMS.glob("*.puml"))

_PLANTUML_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-_"
_BASE64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_TO_BASE64 = str.maketrans(_PLANTUML_ALPHABET, _BASE64_ALPHABET)


def embedded_source(svg: str) -> str:
    """The diagram text PlantUML embedded in an SVG it wrote."""
    found = re.findall(r"<\?plantuml-src (\S+)\?>", svg)
    assert len(found) == 1, "no single embedded source: was the SVG written by PlantUML?"
    encoded = found[0].translate(_TO_BASE64)
    compressed = base64.b64decode(encoded + "=" * (-len(encoded) % 4))
    return zlib.decompress(compressed, wbits=-zlib.MAX_WBITS).decode()


def diagram_body(source: str) -> str:
    """What PlantUML embeds of a source: the lines between ``@startuml`` and ``@enduml``."""
    lines = source.strip().splitlines()
    assert lines[0].startswith("@startuml") and lines[-1] == "@enduml", "one diagram per file"
    return "\n".join(lines[1:-1]).strip()


def pinned_plantuml_version() -> str:
    makefile = (ROOT / "Makefile").read_text()
    match = re.search(r"^PLANTUML_VERSION := (\S+)$", makefile, re.MULTILINE)
    assert match is not None, "the Makefile pins PLANTUML_VERSION"
    return match.group(1)


def test_there_are_the_three_diagrams() -> None:
    assert {source.stem for source in SOURCES} == {"components", "token-flow", "sink-batch"}


def test_every_svg_has_its_source() -> None:
    assert {svg.stem for svg in DIAGRAMS.glob("*.svg")} == {source.stem for source in SOURCES}


@pytest.mark.parametrize("source", SOURCES, ids=lambda path: path.stem)
def test_svg_was_rendered_from_the_current_source(source: Path) -> None:
    svg = source.with_suffix(".svg").read_text()
    assert embedded_source(svg) == diagram_body(source.read_text()), "run: make diagrams"
    assert f"<?plantuml {pinned_plantuml_version()}?>" in svg, "run: make diagrams"


@pytest.mark.parametrize("source", SOURCES, ids=lambda path: path.stem)
def test_layout_needs_no_graphviz(source: Path) -> None:
    # Sequence diagrams are laid out by PlantUML itself; the others by Graphviz unless told
    # to use smetana, its Java port.
    svg = source.with_suffix(".svg").read_text()
    if 'data-diagram-type="SEQUENCE"' not in svg:
        assert "!pragma layout smetana" in source.read_text()


@pytest.mark.parametrize("document", ["docs/architecture.md", "README.md"])
def test_diagrams_are_shown_in_the_docs(document: str) -> None:
    text = (ROOT / document).read_text()
    base = (ROOT / document).parent
    shown = {
        (base / target).resolve() for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+\.svg)\)", text)
    }
    assert {source.with_suffix(".svg") for source in SOURCES} <= shown
