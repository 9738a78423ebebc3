#!/usr/bin/env python3
"""The owner's console over real HTTPS (issue 12): headless Chromium (Debian's
/usr/bin/chromium, Playwright, a virtual WebAuthn authenticator) against the
server's HTTPS listener with its self-signed certificate. Registers a passkey
with the one-time link, signs in, checks that the approvals page and the
pairing page show the certificate fingerprint given as --fingerprint (what the
waiting agent pinned), then approves the pairing by typing the pair code and
the 6 digits, and finds the reserved inbox names refused by the console. Run by crates/cli/tests/console_https.rs; prints one JSON line
{"step": "approved", ...}; any failed check exits non-zero with the reason.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from console_browser import CHROMIUM, FORGE_JS, LIVE, DumpOnFailure, Shots, add_authenticator, emit, register_and_sign_in, sign_count  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--link", required=True)
    ap.add_argument("--owner", required=True)
    ap.add_argument("--pair-code", required=True)
    ap.add_argument("--digits", required=True)
    ap.add_argument("--fingerprint", required=True)
    ap.add_argument("--agent", required=True)
    ap.add_argument("--artifacts", required=True)
    args = ap.parse_args()
    base = args.base
    assert base.startswith("https://"), base
    shots = Shots(args.artifacts)
    shown = f"SHA-256 {args.fingerprint}"

    with sync_playwright() as pw, DumpOnFailure(args.artifacts):
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--host-resolver-rules=MAP localhost 127.0.0.1", "--no-sandbox"],
        )
        # The certificate is self-signed: the browser is told to accept it, as
        # an owner who compared the fingerprint would.
        context = browser.new_context(viewport={"width": 390, "height": 844}, ignore_https_errors=True)
        page = context.new_page()
        LIVE.append(page)
        cdp, authenticator = add_authenticator(context, page)
        register_and_sign_in(page, cdp, authenticator, base, args.link, args.owner, shots, "https")
        response = page.goto(f"{base}/console")
        tls = response.security_details() or {}
        assert tls.get("protocol", "").startswith("TLS"), f"served over TLS: {tls}"
        cookie = [c for c in context.cookies() if c["name"] == "agentkeys_console"][0]
        assert cookie["secure"] and cookie["httpOnly"], cookie

        # The approvals page: the waiting request, with the certificate the agent pinned.
        page.wait_for_selector("article.request")
        request = page.inner_text("article.request")
        assert "https bot" in request and "Server certificate" in request and shown in request, request
        shots(page, "https-approvals")
        # The pairing page for the code shows the same certificate.
        page.goto(f"{base}/console/pairings?code={args.pair_code}")
        page.wait_for_selector("text=Device fingerprint")
        body = page.inner_text("main")
        assert shown in body, body
        assert args.digits not in page.content(), "the page must not show the digits"
        shots(page, "https-pairing")

        # Approve it on the approvals page by typing the code and the digits.
        count = sign_count(cdp, authenticator)
        page.goto(f"{base}/console")
        page.fill("#pair-code-0", args.pair_code)
        page.fill("#digits-0", args.digits)
        with page.expect_navigation(url=f"{base}/console/agents?done=paired"):
            page.click("article.request >> text=Approve with my passkey")
        assert sign_count(cdp, authenticator) == count + 1, "approving asked the authenticator"
        shots(page, "https-agents-after-pairing")
        # The inbox the owner's notices come from cannot be made for the agent
        # from the console either (passkey asked, then refused with the reason).
        page.goto(f"{base}/console/inboxes")
        for reserved in ["Notifications@agents.localhost", "postmaster@agents.localhost"]:
            out = page.evaluate(FORGE_JS, ["/console/inboxes", {"agent": args.agent, "address": reserved, "hours": ""}, None])
            assert out["first"][0] == 400 and "reserved" in out["first"][2], out["first"][:2]
        assert "notifications@" not in page.inner_text("main")
        emit({"step": "approved", "protocol": tls.get("protocol"), "screenshots": shots.taken})
        browser.close()


if __name__ == "__main__":
    main()
