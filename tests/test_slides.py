"""The offline slide decks (scripts/slides.py): a deck loads nothing from the network, and every file it loads
is beside it. Prose links (<a href>) may point anywhere: they are links, not loads."""

from __future__ import annotations

import importlib.util
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / "notebooks" / "slides" / "vendor"
NOTEBOOK = ROOT / "notebooks" / "06_lora.ipynb"  # math in markdown, a widget, figures
NETWORK = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]*:)?//", re.I)  # http://, https://, ws://, //host (not file:)
LOCAL_SCHEMES = ("data:", "blob:", "about:", "javascript:", "mailto:", "#")


def _slides():
    spec = importlib.util.spec_from_file_location("slides", ROOT / "scripts" / "slides.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _References(HTMLParser):
    """Every URL an element would load (src, href of anything but <a>, ...), prose links, inline JS and CSS."""

    LOADING = {"src", "href", "data", "poster", "srcset", "background", "action", "formaction", "manifest"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.loads, self.links, self.scripts, self.styles, self._inside = [], [], [], [], None

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if value is None:
                continue
            if tag == "a" and name == "href":
                self.links.append(value)
            elif name == "srcset":
                self.loads += [(tag, part.split()[0]) for part in value.split(",") if part.strip()]
            elif name in self.LOADING:
                self.loads.append((tag, value))
            elif name == "style":
                self.styles.append(value)
        if tag in ("script", "style"):
            self._inside = tag

    def handle_endtag(self, tag):
        if tag == self._inside:
            self._inside = None

    def handle_data(self, data):
        if self._inside == "script":
            self.scripts.append(data)
        elif self._inside == "style":
            self.styles.append(data)


def _without_js_comments(code: str) -> str:
    code = re.sub(r"/\*.*?\*/", "", code, flags=re.S)
    return re.sub(r"(?m)(^|[\s;{}(,])//.*$", r"\1", code)  # "//" after ":" (a URL) is not a comment


def _css_loads(css: str) -> list[str]:
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    urls = re.findall(r"""url\(\s*['"]?([^'")\s]+)""", css)
    urls += re.findall(r"""@import\s+['"]([^'"]+)""", css)
    return urls


def _required_modules(code: str) -> list[str]:
    """The module paths of require([...]) / require({...}, [...]) calls."""
    paths = []
    for deps in re.findall(r"require\(\s*(?:\{.*?\}\s*,\s*)?\[(.*?)\]", code, flags=re.S):
        paths += re.findall(r"""['"]([^'"]+)['"]""", deps)
    return paths


def _local_file(base: Path, url: str) -> Path:
    return (base / unquote(urlsplit(url).path)).resolve()


@pytest.fixture(scope="module")
def deck(tmp_path_factory):
    out = tmp_path_factory.mktemp("slides")
    path = _slides().build(NOTEBOOK, out)
    refs = _References()
    html = path.read_text(encoding="utf-8")
    refs.feed(html)
    return path, html, refs


def test_deck_loads_nothing_from_the_network(deck):
    path, html, refs = deck
    assert refs.loads, "the parser found no <script src>/<link href> at all"
    remote = [(tag, url) for tag, url in refs.loads if NETWORK.match(url)]
    assert not remote, f"elements load from the network: {remote}"
    for code in refs.scripts:
        code = _without_js_comments(code)
        urls = re.findall(r"""['"`]((?:[a-z][a-z0-9+.-]*:)?//[^'"`\s]*)""", code, flags=re.I)
        urls = [u for u in urls if not u.startswith("http://www.w3.org/")]  # XML namespaces, not loads
        assert not urls, f"a script names network URLs (import, require, src=...): {urls}"
        assert not re.search(r"\bimport\s*\(|\bimport\s[^;]*\bfrom\b", code), "a script imports an ES module"
    for css in refs.styles:
        remote = [u for u in _css_loads(css) if NETWORK.match(u)]
        assert not remote, f"inline CSS loads {remote}"
    # nbconvert's CDNs by name, wherever they might hide
    for cdn in ("unpkg.com", "cdnjs.cloudflare.com", "cdn.jsdelivr.net", "fonts.googleapis.com"):
        assert cdn not in html, f"the deck names {cdn}"


def test_every_local_asset_the_deck_loads_exists(deck):
    path, html, refs = deck
    base = path.parent
    local = [url for _, url in refs.loads if not url.startswith(LOCAL_SCHEMES) and not NETWORK.match(url)]
    modules = [m for code in refs.scripts for m in _required_modules(code)]
    assert any("reveal.js" in m for m in modules), "reveal.js is not required by the deck's script"
    missing = [url for url in local + modules if not _local_file(base, url).is_file()]
    assert not missing, f"the deck loads files that are not beside it: {missing}"
    # MathJax's configuration files named in ?config=...
    mathjax = [url for url in local if url.split("?")[0].endswith("/MathJax.js")]
    assert len(mathjax) == 1, mathjax
    root = _local_file(base, mathjax[0]).parent
    for config in re.search(r"config=([^&]+)", mathjax[0]).group(1).split(","):
        assert (root / "config" / f"{config}.js").is_file(), f"MathJax config {config} is missing"
    # and the relative url(...) of the vendored style sheets (theme fonts and the like)
    for url in local:
        if url.split("?")[0].endswith(".css"):
            sheet = _local_file(base, url)
            for ref in _css_loads(sheet.read_text(encoding="utf-8")):
                if not ref.startswith(LOCAL_SCHEMES):
                    assert not NETWORK.match(ref), f"{sheet.name} loads {ref}"
                    assert _local_file(sheet.parent, ref).is_file(), f"{sheet.name} refers to missing {ref}"


def test_deck_is_a_reveal_deck_with_math_and_static_widgets(deck):
    path, html, refs = deck
    assert html.count("<section") > 5
    assert "Reveal.initialize" in html
    assert "$$" in html and "MathJax.Hub.Config" in html  # MathJax typesets the markdown's $$...$$ in the browser
    assert "widget-view+json" not in html and "widget-state+json" not in html
    assert "Interactive widget, shown as saved" in html
    assert "data:image/png;base64," in html  # figures, including the one the widget's Output showed


def test_widget_snapshot_shows_control_values_html_and_outputs():
    slides = _slides()
    models = {
        "box": {"model_name": "VBoxModel", "state": {"children": ["IPY_MODEL_pick", "IPY_MODEL_rank",
                                                                  "IPY_MODEL_go", "IPY_MODEL_text", "IPY_MODEL_out"]}},
        "pick": {"model_name": "DropdownModel", "state": {"description": "model", "_options_labels": ["a", "b"],
                                                          "index": 1}},
        "rank": {"model_name": "IntSliderModel", "state": {"description": "r", "value": 8}},
        "go": {"model_name": "ButtonModel", "state": {"description": "Run"}},
        "text": {"model_name": "HTMLModel", "state": {"value": "<b>question</b>"}},
        "out": {"model_name": "OutputModel", "state": {"outputs": [
            {"output_type": "stream", "name": "stdout", "text": "printed\n"}]}},
    }
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("explorer")
    cell.outputs = [nbformat.v4.new_output("display_data", data={
        slides.WIDGET_VIEW: {"model_id": "box", "version_major": 2, "version_minor": 0}, "text/plain": "VBox()"})]
    nb.cells = [cell]
    nb.metadata["widgets"] = {slides.WIDGET_STATE: {"state": models, "version_major": 2, "version_minor": 0}}
    static = slides.static_widgets(nb)
    assert "widgets" not in static.metadata and "widgets" in nb.metadata  # a copy; the notebook is untouched
    caption, shown_html, shown_stream = static.cells[0].outputs
    assert "model = b · r = 8" in caption.data["text/html"] and "Run" not in caption.data["text/html"]
    assert shown_html.data["text/html"] == "<b>question</b>"
    assert shown_stream.text == "printed\n"
    nbformat.validate(static)


def test_vendored_assets_are_complete_and_licensed():
    readme = (VENDOR / "README.md").read_text()
    for folder, licence in [("reveal.js", "LICENSE"), ("jquery", "LICENSE.txt"), ("requirejs", "LICENSE"),
                            ("mathjax", "LICENSE")]:
        assert (VENDOR / folder / licence).is_file(), f"{folder} has no licence file"
        assert f"`{folder}/`" in readme, f"the vendor README does not describe {folder}/"
    assert not (VENDOR / "mathjax" / "latest.js").exists()  # it would ask a CDN for the newest version
    for sheet in VENDOR.rglob("*.css"):
        remote = [u for u in _css_loads(sheet.read_text(encoding="utf-8")) if NETWORK.match(u)]
        assert not remote, f"{sheet.relative_to(VENDOR)} loads {remote}"
