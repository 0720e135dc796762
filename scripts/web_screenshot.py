"""Screenshot the web demo answering about an example slide, in headless Chromium (README's picture).

    python scripts/web_screenshot.py --from_pretrained checkpoints/demo/lora --out docs/images/web_demo.png

Why a script: the README's screenshot must come from a real browser on a real model, and be
reproducible after every change of the quickstart (tests/test_web_browser.py checks the same page on a
tiny model). Needs Debian's `chromium` and the `dev` extra (playwright).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--from_pretrained", required=True, help="checkpoint directory")
    parser.add_argument("--out", default="docs/images/web_demo.png", help="PNG to write")
    parser.add_argument("--slide", default="sandstone", help="example slide name in examples/ (NAME_ppl.png)")
    parser.add_argument(
        "--question",
        action="append",
        default=None,
        help="question to ask; repeat for follow-ups in one conversation (default: Describe this thin section.)",
    )
    parser.add_argument("--lang", default="en", choices=["en", "zh"])
    parser.add_argument(
        "--chromium", default=None, help="Chromium binary (default: Debian's /usr/bin/chromium)"
    )
    args = parser.parse_args()

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from thinchat.threads import passive_omp_threads

    passive_omp_threads()
    from playwright.sync_api import sync_playwright

    from thinchat.engine import ChatEngine
    from thinchat.server import free_port
    from thinchat.web.app import build_demo, launch
    from thinchat.web.browser import CHROMIUM, HEADLESS_ARGS

    examples = ROOT / "examples"
    engine = ChatEngine.from_pretrained(args.from_pretrained)
    demo = build_demo(engine, lang=args.lang)
    port = free_port()
    launch(demo, host="127.0.0.1", port=port, prevent_thread_lock=True)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium or str(CHROMIUM), args=HEADLESS_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(180_000)
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#ppl-image input[type=file]", state="attached")
            page.set_input_files("#ppl-image input[type=file]", str(examples / f"{args.slide}_ppl.png"))
            page.set_input_files("#xpl-image input[type=file]", str(examples / f"{args.slide}_xpl.png"))
            page.wait_for_selector("#ppl-image img")
            page.wait_for_selector("#xpl-image img")
            bots = page.locator('#chatbot [data-testid="bot"]')
            for question in args.question or ["Describe this thin section."]:
                before = bots.count()
                page.fill("#question textarea", question)
                page.click("#send")
                # Done when the box is cleared (the handler's last update) and a new answer has text; a
                # new slide's first question brings two answers (the demo looks first).
                page.wait_for_function(
                    """(n) => {
                        const bots = document.querySelectorAll('#chatbot [data-testid="bot"]');
                        return document.querySelector('#question textarea').value === '' &&
                            bots.length > n && bots[bots.length - 1].innerText.trim().length > 0 &&
                            !document.querySelector('#chatbot .pending');
                    }""",
                    arg=before,
                )
                page.wait_for_timeout(500)  # the last streamed chunk
                print(f"Q: {question}")
                for k in range(before, bots.count()):
                    print(f"A: {bots.nth(k).inner_text()}")
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=args.out)
            browser.close()
    finally:
        demo.close()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
