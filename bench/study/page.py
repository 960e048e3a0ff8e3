"""The participant's page: an HTML document with no inline script or style (the Content-Security-Policy allows
neither); its behaviour is `static/study.js`, its layout `static/study.css`, both served by the app from this
package. Candidates form a grid: up to four side by side on a wide screen, 2 x 2 on a phone."""

from __future__ import annotations

from importlib import resources

PARTICIPANT_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Preference study</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><meta name="referrer" content="no-referrer">
<link rel="stylesheet" href="/static/study.css"><script src="/static/study.js" defer></script>
</head><body>
<p id="instruction"></p>
<p id="progress"></p>
<p id="note" role="status"></p>
<div id="trial" hidden>
  <h3>Reference photos of the subject</h3><div id="refs"></div>
  <h3>Prompt</h3><div id="prompt"></div>
  <h3>Candidates <small>(click one, or press its number)</small></h3><div id="cands"></div>
</div>
<p id="status" role="alert"></p>
<button id="retry" type="button" hidden>Retry</button>
<p id="done" hidden>All trials are done. Thank you!</p>
</body></html>
"""

STATIC = {"study.js": "text/javascript; charset=utf-8", "study.css": "text/css; charset=utf-8"}
"""The files under `static/` the app serves (by these fixed names only), with their media types."""


def static_files() -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, media type) of the page's script and style sheet, read once from the package."""
    folder = resources.files("bench.study").joinpath("static")
    return {name: (folder.joinpath(name).read_bytes(), media) for name, media in STATIC.items()}
