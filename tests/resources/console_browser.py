#!/usr/bin/env python3
"""Drives the owner's web console in a real headless Chromium (Debian's
/usr/bin/chromium) with Playwright and a virtual WebAuthn authenticator
(Chrome DevTools Protocol: WebAuthn.enable + addVirtualAuthenticator, user
verification on). Run by crates/cli/tests/console_browser.rs against the real
server.

Protocol with the Rust test (JSON lines): this script prints
{"step": "approved", ...} once the pairing is approved in the browser, then
reads one line from stdin with what the test set up meanwhile (a grant, a key,
an inbox with a hostile HTML message, the second owner's link), finishes and
prints {"step": "done", ...}. Every check is an assertion here: a failure exits
non-zero with the reason. Screenshots of every page go to --artifacts.
"""

import argparse
import datetime
import http.server
import json
import os
import re
import smtplib
import sys
import threading
import urllib.error
import urllib.request

from playwright.sync_api import sync_playwright

CHROMIUM = os.environ.get("AGENTKEYS_CHROMIUM", "/usr/bin/chromium")

# The same conversions as static/console.js, for the requests the tests forge.
FORGE_JS = """
async ([path, fields, postTo]) => {
  const enc = (buf) => { const b = new Uint8Array(buf); let s = ""; for (const x of b) s += String.fromCharCode(x);
    return btoa(s).replace(/\\+/g, "-").replace(/\\//g, "_").replace(/=+$/, ""); };
  const dec = (t) => { const s = atob(t.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((t.length + 3) % 4));
    return Uint8Array.from(s, (c) => c.charCodeAt(0)).buffer; };
  const csrf = document.querySelector("input[name=csrf]").value;
  const gate = new URLSearchParams({ path, csrf, ...fields });
  const begun = await (await fetch("/console/gate", { method: "POST", body: gate })).json();
  const pk = begun.options.publicKey;
  pk.challenge = dec(pk.challenge);
  (pk.allowCredentials || []).forEach((c) => { c.id = dec(c.id); });
  const cred = await navigator.credentials.get({ publicKey: pk });
  const assertion = JSON.stringify({ id: cred.id, rawId: enc(cred.rawId), type: cred.type, extensions: {},
    response: { authenticatorData: enc(cred.response.authenticatorData), clientDataJSON: enc(cred.response.clientDataJSON),
      signature: enc(cred.response.signature), userHandle: cred.response.userHandle ? enc(cred.response.userHandle) : null } });
  const body = new URLSearchParams({ csrf, ...fields, challenge: begun.challenge, assertion });
  const post = async (b) => { const r = await fetch(postTo || path, { method: "POST", body: b }); return [r.status, r.url, await r.text()]; };
  const first = await post(body);
  const replay = await post(body);
  return { first, replay };
}
"""

# A gated POST as a page can send it without the passkey (or without the token).
PLAIN_POST_JS = """
async ([path, body]) => {
  const r = await fetch(path, { method: "POST", body: new URLSearchParams(body) });
  return [r.status, await r.text()];
}
"""


class Shots:
    def __init__(self, directory):
        self.directory = directory
        self.taken = []
        os.makedirs(directory, exist_ok=True)

    def __call__(self, page, name):
        path = os.path.join(self.directory, f"{len(self.taken) + 1:02d}-{name}.png")
        page.screenshot(path=path, full_page=True)
        self.taken.append(path)


def emit(obj):
    print(json.dumps(obj), flush=True)


def add_authenticator(context, page):
    cdp = context.new_cdp_session(page)
    cdp.send("WebAuthn.enable", {"enableUI": False})
    options = {
        "protocol": "ctap2",
        "transport": "internal",
        "hasResidentKey": True,
        "hasUserVerification": True,
        "isUserVerified": True,
        "automaticPresenceSimulation": True,
    }
    authenticator = cdp.send("WebAuthn.addVirtualAuthenticator", {"options": options})["authenticatorId"]
    return cdp, authenticator


def sign_count(cdp, authenticator):
    creds = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})["credentials"]
    assert len(creds) == 1, f"one passkey in the authenticator, got {len(creds)}"
    return creds[0]["signCount"]


def register_and_sign_in(page, cdp, authenticator, base, link, owner, shots, tag):
    page.goto(link)
    shots(page, f"{tag}-register")
    with page.expect_navigation(url=f"{base}/console/login"):
        page.click("#register button[type=submit]")
    registered = sign_count(cdp, authenticator)
    # The link is single use: a second registration with it is refused.
    page.goto(link)
    page.click("#register button[type=submit]")
    page.wait_for_selector("#gate-error:not([hidden])")
    assert "Registration failed" in page.inner_text("#gate-error")
    page.goto(f"{base}/console/login")
    shots(page, f"{tag}-login")
    page.fill("#owner", owner)
    with page.expect_navigation(url=f"{base}/console"):
        page.click("#login button[type=submit]")
    assert sign_count(cdp, authenticator) == registered + 1, "signing in asked the authenticator"


def serve_attacker_page(target, fields):
    """A page on another origin that posts a form to the console."""
    inputs = "".join(f'<input type="hidden" name="{k}" value="{v}">' for k, v in fields.items())
    html = f'<!doctype html><title>evil</title><form method="post" action="{target}">{inputs}<button id="go">win a prize</button></form>'

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(html.encode())

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def check_axe(browser, cookies, urls, axe_path, shots_dir, shots):
    """axe-core in the page (CSP bypassed for this context only: axe is injected
    inline), at a desktop size; a screenshot of each page at that size too."""
    if not axe_path:
        return {}
    context = browser.new_context(bypass_csp=True, viewport={"width": 1280, "height": 800})
    context.add_cookies(cookies)
    page = context.new_page()
    found = {}
    for url in urls:
        page.goto(url)
        shots(page, "desktop-" + (re.sub(r"[^a-z0-9]+", "-", url.split("/console", 1)[1].lower()).strip("-") or "approvals")[:40])
        page.add_script_tag(path=axe_path)
        result = page.evaluate("async () => (await axe.run()).violations.map(v => [v.id, v.impact, v.nodes.length])")
        found[url] = result
        critical = [v for v in result if v[1] == "critical"]
        assert not critical, f"critical accessibility violations on {url}: {critical}"
    context.close()
    with open(os.path.join(shots_dir, "axe.json"), "w") as f:
        json.dump(found, f, indent=1)
    return found


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--link", required=True)
    ap.add_argument("--owner", required=True)
    ap.add_argument("--pair-code", required=True)
    ap.add_argument("--digits", required=True)
    ap.add_argument("--artifacts", required=True)
    ap.add_argument("--axe", default="")
    args = ap.parse_args()
    base = args.base
    shots = Shots(args.artifacts)

    with sync_playwright() as pw, DumpOnFailure(args.artifacts):
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--host-resolver-rules=MAP localhost 127.0.0.1", "--no-sandbox"],
        )
        # Phone-sized.
        context = browser.new_context(viewport={"width": 390, "height": 844})
        page = context.new_page()
        LIVE.append(page)
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        cdp, authenticator = add_authenticator(context, page)

        # Register (one-time link), sign in: the session cookie.
        register_and_sign_in(page, cdp, authenticator, base, args.link, args.owner, shots, "owner1")
        shots(page, "approvals")
        cookie = [c for c in context.cookies() if c["name"] == "agentkeys_console"]
        assert len(cookie) == 1, context.cookies()
        cookie = cookie[0]
        assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict", cookie
        assert cookie["path"] == "/console", cookie
        response = page.goto(f"{base}/console")
        csp = response.headers.get("content-security-policy", "")
        assert "default-src 'none'" in csp and "script-src 'self'" in csp, csp

        # Approve the pairing by typing the 6 digits: wrong ones first, then right.
        page.fill("#code", args.pair_code)
        page.click("text=Show the request")
        page.wait_for_selector("text=Device fingerprint")
        shots(page, "pairing-request")
        assert args.digits not in page.content(), "the page must not show the digits the owner has to type"
        wrong = "000000" if args.digits != "000000" else "111111"
        count = sign_count(cdp, authenticator)
        page.fill("#confirmation", wrong)
        page.click("text=Approve with my passkey")
        page.wait_for_selector("text=do not match")
        shots(page, "pairing-wrong-digits")
        assert sign_count(cdp, authenticator) == count + 1, "the wrong digits still asked the authenticator"
        # The request is addressed to this owner (`agent pair --owner`): it waits on
        # the approvals page; approve it there with the pair code and the digits.
        page.goto(f"{base}/console")
        page.wait_for_selector("article.request")
        assert "ci bot" in page.inner_text("article.request"), page.inner_text("main")
        shots(page, "approvals-pending")
        page.fill("#pair-code-0", args.pair_code)
        page.fill("#digits-0", args.digits)
        with page.expect_navigation(url=f"{base}/console/agents?done=paired"):
            page.click("article.request >> text=Approve with my passkey")
        assert sign_count(cdp, authenticator) == count + 2, "approving asked the authenticator again"
        shots(page, "agents-after-pairing")
        emit({"step": "approved"})

        setup = json.loads(sys.stdin.readline())
        grant, key, agent, inbox = setup["grant"], setup["key"], setup["agent"], setup["inbox"]

        page.goto(f"{base}/console/agents")
        assert grant in page.content() and key in page.content(), "the agents page lists the key and the grant"
        # The key minted three times: its last use is shown (written once a minute at most).
        key_line = page.locator("li", has_text=key).first.inner_text()
        assert re.search(r"last used \d{4}-\d\d-\d\d \d\d:\d\d", key_line), key_line
        shots(page, "agents")
        csrf = page.get_attribute("input[name=csrf]", "value")
        grant_path = f"/console/grants/{grant}/revoke"
        key_path = f"/console/keys/{key}/revoke"

        # Security: a gated POST without a fresh assertion, or without the CSRF token.
        status, _ = page.evaluate(PLAIN_POST_JS, [grant_path, {"csrf": csrf, "challenge": "", "assertion": ""}])
        assert status == 403, f"no assertion: {status}"
        status, _ = page.evaluate(PLAIN_POST_JS, [grant_path, {"challenge": "x", "assertion": "{}"}])
        assert status == 403, f"no CSRF token: {status}"
        # An assertion made for another action (the key's revocation) posted to the grant's.
        count = sign_count(cdp, authenticator)
        forged = page.evaluate(FORGE_JS, [key_path, {}, grant_path])
        assert forged["first"][0] == 403, f"an assertion for another action: {forged['first'][0]}"
        assert sign_count(cdp, authenticator) == count + 1
        # A legitimate one, then its replay.
        done = page.evaluate(FORGE_JS, [key_path, {}, None])
        assert done["first"][0] == 200 and done["first"][1].endswith("done=key-revoked"), done["first"][:2]
        assert done["replay"][0] == 403, f"a replayed assertion: {done['replay'][0]}"
        # A cross-site form post (another origin; the cookie is SameSite=Strict anyway).
        attacker = serve_attacker_page(f"{base}/console/agents/{agent}/stop", {"csrf": csrf})
        page.goto(f"http://127.0.0.1:{attacker.server_address[1]}/")
        with page.expect_navigation() as nav:
            page.click("#go")
        assert nav.value.status == 403, f"cross-site form post: {nav.value.status}"
        shots(page, "cross-site-refused")
        attacker.shutdown()
        # The same with the session cookie forced in, from a script outside the browser: refused on Origin.
        request = urllib.request.Request(
            f"{base}/console/agents/{agent}/stop",
            data=f"csrf={csrf}".encode(),
            headers={"Origin": "http://evil.example", "Cookie": f"agentkeys_console={cookie['value']}",
                     "Content-Type": "application/x-www-form-urlencoded"},
            method="POST",
        )
        try:
            urllib.request.urlopen(request)
            raise AssertionError("a POST from another origin was accepted")
        except urllib.error.HTTPError as e:
            assert e.code == 403, e.code

        # Create a grant from the agent's form, then change the first one (shorter,
        # same scope): each asks the authenticator again.
        page.goto(f"{base}/console/agents")
        count = sign_count(cdp, authenticator)
        page.fill(f"#inbox-{agent}", inbox)
        page.select_option(f"#new-scopes-{agent}", "read,send")
        page.fill(f"#new-days-{agent}", "7")
        with page.expect_navigation(url=f"{base}/console/agents?done=grant-created"):
            page.click("form[action='/console/grants'] button")
        assert sign_count(cdp, authenticator) == count + 1, "creating a grant asked the authenticator"
        assert page.locator("li", has_text="read,send").count() >= 1, "the new grant is listed"
        page.select_option(f"#scopes-{grant}", "read")
        page.fill(f"#days-{grant}", "3")
        with page.expect_navigation(url=f"{base}/console/agents?done=grant-changed"):
            page.click(f"form[action='/console/grants/{grant}/change'] button")
        assert sign_count(cdp, authenticator) == count + 2, "changing a grant asked the authenticator"
        shots(page, "grant-created-and-changed")
        # Over 30 days is refused by the server, whatever the form allows.
        out = page.evaluate(FORGE_JS, [f"/console/grants/{grant}/change", {"scopes": "", "days": "31"}, None])
        assert out["first"][0] == 400, f"31 days: {out['first'][0]}"
        # A field given twice is refused (the action hash keeps one value per name).
        dup = page.evaluate("""async ([path, csrf]) => { const b = new URLSearchParams([["csrf", csrf], ["path", path], ["days", "3"], ["days", "30"]]);
            const r = await fetch("/console/gate", { method: "POST", body: b }); return r.status; }""", [f"/console/grants/{grant}/change", csrf])
        assert dup == 400, f"duplicate field: {dup}"

        # Revoke the grant from its button: the authenticator is asked again.
        page.goto(f"{base}/console/agents")
        count = sign_count(cdp, authenticator)
        with page.expect_navigation(url=f"{base}/console/agents?done=grant-revoked"):
            page.click(f"form[action='{grant_path}'] button")
        assert sign_count(cdp, authenticator) == count + 1, "revoking asked the authenticator"
        shots(page, "grant-revoked")

        # The inbox and its hostile HTML message, rendered inert.
        page.goto(f"{base}/console/inboxes")
        shots(page, "inboxes")
        page.click(f"text={inbox}")
        shots(page, "inbox")
        page.click("ul.items li a")
        page.wait_for_selector("div.mail-html")
        message_url = page.url
        shots(page, "message")
        for selector in ["div.mail-html script", "div.mail-html img", "div.mail-html form", "div.mail-html input",
                         "div.mail-html iframe", "div.mail-html a[href^='javascript']", "div.mail-html [onclick]",
                         "div.mail-html [style]"]:
            assert page.locator(selector).count() == 0, f"{selector} survived"
        assert page.locator("div.mail-html b").count() >= 1, "harmless markup stays"
        assert page.evaluate("() => window.__pwned === undefined"), "a script of the mail ran"
        assert page.locator("text=invoice.pdf").count() == 1, "the attachment list"

        # Audit: the owner's records with the gate used; filter by operation.
        page.goto(f"{base}/console/audit")
        shots(page, "audit")
        text = page.inner_text("ol.audit")
        assert "grant.revoke" in text and "pairing.approve" in text and "passkey" in text, text[:2000]
        assert "credential.read × 3 in this hour" in text, text[:2000]
        assert "agent ci bot" in text and "you" in text, "actors by name"
        assert "Chain intact" in page.inner_text("main"), page.inner_text("main")[:500]
        page.goto(f"{base}/console/audit?operation=grant.revoke")
        rows = page.locator("ol.audit li").all_inner_texts()
        assert rows and all("grant.revoke" in r for r in rows), rows
        shots(page, "audit-filtered")
        # The audit time filter (UTC, the form's datetime-local fields): the
        # last hour to the next holds today's records, a window in the future none.
        now = datetime.datetime.now(datetime.timezone.utc)
        fmt = lambda t: t.strftime("%Y-%m-%dT%H:%M")
        page.goto(f"{base}/console/audit")
        page.fill("#from", fmt(now - datetime.timedelta(hours=1)))
        page.fill("#to", fmt(now + datetime.timedelta(hours=1)))
        page.fill("#operation", "pairing.approve")
        with page.expect_navigation(url=re.compile(r".*from=.*")):
            page.click("form.filters button")
        rows = page.locator("ol.audit li").all_inner_texts()
        assert len(rows) == 2 and all("pairing.approve" in r for r in rows), rows
        assert any("denied" in r and "6 digits" in r for r in rows), "the wrong digits are on record with the reason"
        shots(page, "audit-time-filter")
        page.fill("#from", fmt(now + datetime.timedelta(days=1)))
        page.fill("#to", "")
        with page.expect_navigation():
            page.click("form.filters button")
        assert page.locator("ol.audit li").count() == 0, page.inner_text("main")[:500]
        assert page.goto(f"{base}/console/audit?from=yesterday").status == 400

        # Grant requests the agent made: approve the first, deny the second (each
        # asks the authenticator); the grant exists only for the first.
        r_approve, r_deny, r_left = setup["requests"]
        page.goto(f"{base}/console")
        requests_text = page.inner_text("main")
        assert "request 0: sign up at example.com" in requests_text and "2 days" in requests_text, requests_text[:2000]
        shots(page, "grant-requests")
        count = sign_count(cdp, authenticator)
        with page.expect_navigation(url=f"{base}/console?done=grant-request-approved"):
            page.click(f"form[action='/console/grant-requests/{r_approve}/approve'] button")
        with page.expect_navigation(url=f"{base}/console?done=grant-request-denied"):
            page.click(f"form[action='/console/grant-requests/{r_deny}/deny'] button")
        assert sign_count(cdp, authenticator) == count + 2, "each decision asked the authenticator"
        assert page.locator(f"form[action='/console/grant-requests/{r_approve}/approve']").count() == 0, "decided: gone"
        assert page.locator(f"form[action='/console/grant-requests/{r_left}/approve']").count() == 1
        shots(page, "grant-requests-decided")
        # A decided request cannot be decided again (the same 404 as a missing one).
        again = page.evaluate(FORGE_JS, [f"/console/grant-requests/{r_approve}/approve", {}, None])
        assert again["first"][0] == 404, again["first"][:2]

        # Deny a pairing request outright from the approvals page (the agent
        # waiting on it stops at once: the Rust test checks). It asks the
        # authenticator; the request is gone, the other one still waits.
        deny_first, deny_left = setup["unwanted"]
        page.goto(f"{base}/console")
        assert "unwanted bot 0" in page.inner_text("main") and "unwanted bot 1" in page.inner_text("main")
        deny_form = page.locator("article.request", has_text=deny_first).locator("form[action$='/deny']")
        deny_path = deny_form.get_attribute("action")
        left_path = page.locator("article.request", has_text=deny_left).locator("form[action$='/deny']").get_attribute("action")
        assert re.fullmatch(r"/console/pairings/[0-9a-f]{64}/deny", deny_path), deny_path
        count = sign_count(cdp, authenticator)
        with page.expect_navigation(url=f"{base}/console?done=pairing-denied"):
            deny_form.locator("button").click()
        assert sign_count(cdp, authenticator) == count + 1, "denying a pairing asked the authenticator"
        assert deny_first not in page.inner_text("main") and deny_left in page.inner_text("main")
        assert "Pairing denied" in page.inner_text("main")
        shots(page, "pairing-denied")
        # Denied is final: a second denial (a fresh assertion for it) is the same 404 as a missing request.
        again = page.evaluate(FORGE_JS, [deny_path, {}, None])
        assert again["first"][0] == 404, again["first"][:2]

        # Messages held for review: listed with agent, from, to, subject and
        # time; one read (hostile HTML inert), approved; one rejected; each
        # decision asks the authenticator.
        h_approve, h_reject, h_left = setup["held"]
        page.goto(f"{base}/console/review")
        review_text = page.inner_text("main")
        for expected in ["held: please approve", "held: please reject", "held: left alone", "carol@remote.example",
                         "ci bot", inbox]:
            assert expected in review_text, f"{expected} not on the review page: {review_text[:1500]}"
        shots(page, "review")
        page.click("text=held: please approve")
        page.wait_for_url(f"{base}/console/review/{h_approve}")
        page.wait_for_selector("div.mail-html")
        for selector in ["div.mail-html script", "div.mail-html img", "div.mail-html [onclick]"]:
            assert page.locator(selector).count() == 0, f"{selector} survived in the held message"
        assert page.locator("div.mail-html b").count() >= 1, "harmless markup stays"
        assert page.evaluate("() => window.__pwned === undefined"), "a script of the held mail ran"
        shots(page, "review-message")
        count = sign_count(cdp, authenticator)
        with page.expect_navigation(url=f"{base}/console/review?done=approved"):
            page.click(f"form[action='/console/review/{h_approve}/approve'] button")
        assert sign_count(cdp, authenticator) == count + 1, "approving a held message asked the authenticator"
        page.goto(f"{base}/console/review/{h_reject}")
        with page.expect_navigation(url=f"{base}/console/review?done=rejected"):
            page.click(f"form[action='/console/review/{h_reject}/reject'] button")
        assert sign_count(cdp, authenticator) == count + 2, "rejecting asked the authenticator"
        review_text = page.inner_text("main")
        assert "held: left alone" in review_text and "held: please approve" not in review_text, review_text[:1500]
        shots(page, "review-decided")
        # A decided message cannot be decided again; the decided view has no buttons.
        again = page.evaluate(FORGE_JS, [f"/console/review/{h_approve}/reject", {}, None])
        assert again["first"][0] == 400 and "decided already" in again["first"][2], again["first"][:2]
        page.goto(f"{base}/console/review/{h_approve}")
        assert "approved" in page.inner_text("main") and page.locator("form.gated").count() == 0
        held_url = f"{base}/console/review/{h_left}"

        # Create an inbox for the agent, then disable it: each asks the authenticator.
        domain = inbox.split("@")[1]
        made = f"made-in-console@{domain}"
        page.goto(f"{base}/console/inboxes")
        count = sign_count(cdp, authenticator)
        page.select_option("#new-inbox-agent", agent)
        page.fill("#new-inbox-address", made)
        page.fill("#new-inbox-hours", "48")
        with page.expect_navigation(url=f"{base}/console/inboxes?done=inbox-created"):
            page.click("form[action='/console/inboxes'] button")
        assert sign_count(cdp, authenticator) == count + 1, "creating an inbox asked the authenticator"
        line = page.locator("li", has_text=made).first.inner_text()
        assert "active" in line and "expires" in line and "ci bot" in line, line
        shots(page, "inbox-created")
        with page.expect_navigation(url=f"{base}/console/inboxes?done=inbox-disabled"):
            page.click(f"form[action='/console/inboxes/{made}/disable'] button")
        assert sign_count(cdp, authenticator) == count + 2, "disabling asked the authenticator"
        assert "disabled" in page.locator("li", has_text=made).first.inner_text()
        shots(page, "inbox-disabled")
        # The MX refuses the disabled inbox now.
        with smtplib.SMTP("127.0.0.1", setup["mx"], timeout=30) as smtp:
            try:
                smtp.sendmail("someone@example.net", [made], b"Subject: hi\r\n\r\nhi\r\n")
                raise AssertionError("mail to a disabled inbox was accepted")
            except smtplib.SMTPRecipientsRefused as e:
                code, text = e.recipients[made]
                assert code == 550 and b"5.2.1" in text, (code, text)
        # A taken address is refused with its reason, nothing created.
        out = page.evaluate(FORGE_JS, ["/console/inboxes", {"agent": agent, "address": made, "hours": ""}, None])
        assert out["first"][0] == 400 and "exists" in out["first"][2], out["first"][:2]

        # What the agent sent: the bounce from the receiving MTA, with its reply.
        page.goto(f"{base}/console/sent")
        sent_text = page.inner_text("main")
        assert setup["sent_to"] in sent_text and "bounced" in sent_text and "550" in sent_text, sent_text[:1500]
        assert "ci bot" in sent_text, "the sending agent by name"
        shots(page, "sent")
        page.goto(f"{base}/console/sent?inbox={inbox}")
        assert setup["sent_to"] in page.inner_text("main")
        page.goto(f"{base}/console/sent?inbox={made}")
        assert setup["sent_to"] not in page.inner_text("main"), "only the chosen inbox's mail"

        page.goto(f"{base}/console/passkeys")
        shots(page, "passkeys")

        axe = check_axe(browser, context.cookies(), [
            f"{base}/console", f"{base}/console/agents", f"{base}/console/inboxes", message_url,
            f"{base}/console/audit", f"{base}/console/passkeys", f"{base}/console/login",
            f"{base}/console/sent", f"{base}/console/audit?agent={agent}&from=2026-01-01T00:00",
            f"{base}/console/review", held_url,
        ], args.axe, args.artifacts, shots)

        # The second owner: its own browser and authenticator; sees none of the first's objects.
        context2 = browser.new_context(viewport={"width": 390, "height": 844})
        page2 = context2.new_page()
        LIVE.append(page2)
        cdp2, authenticator2 = add_authenticator(context2, page2)
        register_and_sign_in(page2, cdp2, authenticator2, base, setup["link2"], setup["owner2"], shots, "owner2")
        page2.goto(f"{base}/console/audit?agent={agent}")
        assert page2.locator("ol.audit li").count() == 0, "filtering by the first owner's agent shows nothing"
        for path in ["/console/agents", "/console/inboxes", "/console/audit", "/console/sent", "/console/review"]:
            page2.goto(base + path)
            content = page2.content()
            for foreign in [agent, inbox, grant, key, args.owner]:
                assert foreign not in content, f"{path} shows the first owner's {foreign}"
            shots(page2, "owner2-" + re.sub(r"[^a-z0-9]+", "-", path.rsplit("/", 1)[1])[:30])
            assert setup["sent_to"] not in content, f"{path} shows the first owner's sent mail"
            assert "held: left alone" not in content, f"{path} shows the first owner's held mail"
        get = "async (u) => { const r = await fetch(u); return [r.status, await r.text()]; }"
        missing = page2.evaluate(get, f"/console/inboxes/nobody@{inbox.split('@')[1]}")
        assert missing[0] == 404, missing[0]
        missing_body = missing[1]
        for url in [f"/console/inboxes/{inbox}", message_url.replace(base, ""), f"/console/pairings?code={args.pair_code}",
                    f"/console/review/{h_left}", f"/console/review/{h_approve}",
                    f"/console/sent?inbox={inbox}", f"/console/sent?inbox={made}"]:
            status, body = page2.evaluate(get, url)
            assert status == 404 and body == missing_body, f"{url}: {status}"
        page2.goto(f"{base}/console/inboxes/{inbox}")
        shots(page2, "owner2-not-found")
        # Gated actions on the first owner's ids, with a valid assertion of the second owner: 404.
        for path, fields in [(f"/console/grants/{grant}/revoke", {}), (f"/console/keys/{key}/revoke", {}),
                             (f"/console/agents/{agent}/stop", {}), (f"/console/inboxes/{made}/enable", {}),
                             (f"/console/inboxes/{inbox}/disable", {}),
                             ("/console/inboxes", {"agent": agent, "address": f"theirs@{domain}", "hours": ""}),
                             ("/console/grants", {"agent": agent, "inbox": inbox, "scopes": "read", "days": "1"}),
                             (f"/console/grant-requests/{r_left}/approve", {}),
                             (left_path, {}),
                             (f"/console/review/{h_left}/approve", {}),
                             (f"/console/review/{h_left}/reject", {}),
                             (f"/console/grant-requests/{r_left}/deny", {})]:
            page2.goto(f"{base}/console/agents")
            out = page2.evaluate(FORGE_JS, [path, fields, None])
            assert out["first"][0] == 404, f"{path}: {out['first'][0]}"
            assert out["first"][2] == missing_body, f"{path}: the same 404 page as a missing object"
        # Nothing of it happened: the first owner's inboxes are as they were.
        page.goto(f"{base}/console/inboxes")
        assert "disabled" in page.locator("li", has_text=made).first.inner_text()
        assert "active" in page.locator("li", has_text=inbox).first.inner_text()
        assert page.locator("li", has_text=f"theirs@{domain}").count() == 0
        page.goto(f"{base}/console")
        assert page.locator(f"form[action='/console/grant-requests/{r_left}/approve']").count() == 1, "still pending"
        assert page.locator(f"form[action='{left_path}']").count() == 1, "the pairing owner2 tried to deny still waits"
        page2.goto(f"{base}/console")
        assert r_left not in page2.content() and "sign up at example.com" not in page2.content(), "owner2 sees no request"

        # Stop the first owner's agent from the console: every key and grant revoked.
        page.goto(f"{base}/console/agents")
        count = sign_count(cdp, authenticator)
        with page.expect_navigation(url=f"{base}/console/agents?done=agent-stopped"):
            page.click(f"form[action='/console/agents/{agent}/stop'] button")
        assert sign_count(cdp, authenticator) == count + 1
        shots(page, "agent-stopped")
        assert page.locator("span.state", has_text="active").count() == 0, "nothing active after the stop"

        # Signing out ends the session: the old cookie no longer opens a page.
        page.click("header form.signout button")
        page.wait_for_url(f"{base}/console/login")
        r = page.goto(f"{base}/console/agents")
        assert page.url == f"{base}/console/login", page.url

        assert not errors, f"page errors: {errors}"
        browser.close()
    emit({"step": "done", "screenshots": shots.taken, "axe": axe})


# Pages open now: on a failure each is saved and its text printed, to see why.
LIVE = []


class DumpOnFailure:
    def __init__(self, directory):
        self.directory = directory

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        if kind is None:
            return False
        for i, p in enumerate(LIVE):
            try:
                print(f"--- page {i}: {p.url}\n{p.inner_text('body')[:3000]}", file=sys.stderr)
                p.screenshot(path=os.path.join(self.directory, f"failure-{i}.png"), full_page=True)
            except Exception as e:  # the page may be gone
                print(f"--- page {i}: {e}", file=sys.stderr)
        return False


if __name__ == "__main__":
    main()
