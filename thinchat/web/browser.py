"""How thinchat drives a headless Chromium against the web demo (the browser test and the README screenshot).

Why these flags: the machines that run them have no display, no GPU and often no network beyond a
package mirror, so Chromium must not try to reach Google services, update components or sync.
"""

from __future__ import annotations

from pathlib import Path

#: Debian's package (`apt-get install -y chromium`).
CHROMIUM = Path("/usr/bin/chromium")

HEADLESS_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
