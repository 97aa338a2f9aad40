"""Fetch (again) the JavaScript and CSS that the slide decks load, into notebooks/slides/vendor/.

Run once by a maintainer, with the npm registry reachable; the result is committed, so building and
showing the decks (scripts/slides.py) never needs the network. Each asset comes from its official npm
package (``npm pack NAME@VERSION``); only the files the decks load are kept, each package's licence
beside them. notebooks/slides/vendor/README.md says what was kept and why.

    .venv/bin/python scripts/vendor_slides.py          # replaces notebooks/slides/vendor/<package>/
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / "notebooks" / "slides" / "vendor"

# folder under vendor/ -> (npm spec, globs of the files kept, relative to the package root)
PACKAGES = {
    "reveal.js": ("reveal.js@4.0.2", [
        "LICENSE",
        "dist/reveal.css", "dist/reveal.js",
        "dist/theme/simple.css",          # nbconvert's default theme (SlidesExporter.reveal_theme)
        "plugin/notes/notes.js",          # the speaker-notes plugin the template requires
    ]),
    # jQuery 2.0.3 (nbconvert's CDN default) was never published on npm; the template only calls
    # $(...).height/.find/.filter/.css, which 3.x keeps, and 3.7.1 has no known advisories.
    "jquery": ("jquery@3.7.1", ["LICENSE.txt", "dist/jquery.min.js"]),
    # The npm package of require.js 2.1.10 has no licence file: the licence (MIT or new BSD) is in
    # the header comment of require.js itself; REQUIREJS_LICENSE below is written beside it.
    "requirejs": ("requirejs@2.1.10", ["require.js"]),
    # MathJax 2.7.7 with the configuration the template asks for (TeX-AMS_CHTML-full plus Safe),
    # the CommonHTML output and its TeX web fonts (woff only: every current browser reads woff).
    "mathjax": ("mathjax@2.7.7", [
        "LICENSE", "MathJax.js",
        "config/TeX-AMS_CHTML-full.js", "config/Safe.js",
        "extensions/Safe.js", "extensions/MathMenu.js", "extensions/MathZoom.js",
        "extensions/HelpDialog.js", "extensions/AssistiveMML.js",
        "extensions/TeX/*.js",            # loaded on demand: \color, \boldsymbol, \cancel, \newcommand, ...
        "jax/input/TeX/*.js",
        "jax/element/mml/*.js", "jax/element/mml/optable/*.js",
        "jax/output/CommonHTML/*.js", "jax/output/CommonHTML/autoload/*.js",
        "jax/output/CommonHTML/fonts/TeX/*.js",
        "fonts/HTML-CSS/TeX/woff/*.woff",
    ]),
}

REQUIREJS_LICENSE = """\
The npm package requirejs@2.1.10 ships no licence file. Its licence is stated in the header of
require.js:

    @license RequireJS 2.1.10 Copyright (c) 2010-2014, The Dojo Foundation All Rights Reserved.
    Available via the MIT or new BSD license.
    see: http://github.com/jrburke/requirejs for details

It is used here under the MIT licence:

Copyright (c) 2010-2014, The Dojo Foundation

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in
all copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN
THE SOFTWARE.
"""

# Themes of reveal.js import their web fonts from Google Fonts; offline the theme's own fallbacks
# (sans-serif) are used instead, so the two @import lines are removed.
GOOGLE_FONTS = re.compile(r"^@import url\(https://fonts\.googleapis\.com/[^)]*\);\n", re.M)


def fetch(spec: str, workdir: Path) -> Path:
    out = subprocess.run(["npm", "pack", spec, "--silent", "--pack-destination", str(workdir)],
                         check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    tgz = workdir / out
    unpacked = workdir / spec.replace("/", "_")
    with tarfile.open(tgz) as tar:
        tar.extractall(unpacked, filter="data")
    return unpacked / "package"


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        for folder, (spec, globs) in PACKAGES.items():
            package = fetch(spec, Path(tmp))
            files = sorted(p for p in package.rglob("*") if p.is_file()
                           and any(fnmatch(p.relative_to(package).as_posix(), g) for g in globs))
            for g in globs:
                if not any(fnmatch(p.relative_to(package).as_posix(), g) for p in files):
                    raise SystemExit(f"{spec}: nothing matches {g}")
            target = VENDOR / folder
            shutil.rmtree(target, ignore_errors=True)
            for path in files:
                dest = target / path.relative_to(package)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dest)
            size = sum(p.stat().st_size for p in files)
            print(f"{spec:>22}: {len(files):3d} files, {size / 1024:7.0f} KiB -> {target.relative_to(ROOT)}")
    theme = VENDOR / "reveal.js" / "dist" / "theme" / "simple.css"
    text, count = GOOGLE_FONTS.subn("", theme.read_text())
    if count != 2:
        raise SystemExit(f"{theme}: expected 2 Google Fonts imports, found {count}")
    theme.write_text(text)
    (VENDOR / "requirejs" / "LICENSE").write_text(REQUIREJS_LICENSE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
