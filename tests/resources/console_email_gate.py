#!/usr/bin/env python3
"""The console's email fallback gate (issue 12) in a real headless Chromium,
driven by Playwright, against the real server; run by
crates/cli/tests/console_email_gate.rs. The owner registers a passkey and signs
in, then loses the authenticator (removed): every gated action is approved by a
code mailed to the owner's address, read here from the receiving test MTA's
directory (smtp_sink.py).

Checked: a code typed into the form approves exactly its action, once (a
replay fails); 5 wrong codes lock a code (the right one then fails); the
emailed link's page (GET, also fetched the way a mail scanner would) shows the
same phrase as the requesting screen and consumes nothing; only its button's
POST approves, a second POST fails, and the requesting screen then finishes the
action; an expired code fails; a code for one action does nothing for another;
asking for codes stops at the per-owner limit. Prints {"step": "done", ...};
every check is an assertion (exit non-zero with the reason).
"""

import argparse
import email
import email.policy
import os
import re
import sqlite3
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from console_browser import CHROMIUM, LIVE, DumpOnFailure, Shots, add_authenticator, emit, register_and_sign_in  # noqa: E402

from playwright.sync_api import sync_playwright  # noqa: E402

# The form as the browser would post it, with the gate fields given.
POST_FORM_JS = """
async ([action, extra]) => {
  const form = document.querySelector(`form[action='${action}']`);
  const body = new URLSearchParams();
  new FormData(form).forEach((v, k) => { if (!(k in extra)) body.append(k, v); });
  Object.entries(extra).forEach(([k, v]) => body.append(k, v));
  const r = await fetch(action, { method: "POST", body });
  return [r.status, r.url, await r.text()];
}
"""


# A POST with exactly these fields, as a page script can send it.
PLAIN_POST_JS = """
async ([path, body]) => {
  const r = await fetch(path, { method: "POST", body: new URLSearchParams(body) });
  return [r.status, await r.text()];
}
"""


class Mailbox:
    """The sink's directory: code mails as they arrive."""

    def __init__(self, directory):
        self.directory = directory
        self.seen = set(self.files())

    def files(self):
        return sorted((f for f in os.listdir(self.directory) if f.endswith(".eml")), key=lambda f: int(f[:-4]))

    def next_code(self, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            for f in self.files():
                if f in self.seen:
                    continue
                self.seen.add(f)
                raw = open(os.path.join(self.directory, f), "rb").read()
                m = email.message_from_bytes(raw, policy=email.policy.default)
                if "approval code" not in str(m["Subject"]):
                    continue
                text = m.get_body(preferencelist=("plain",)).get_content()
                code = re.search(r"Approval code: (\d{6})", text).group(1)
                link = re.search(r"(http://localhost:\d+/console/email-link/\S+)", text).group(1)
                return {"code": code, "link": link, "text": text, "raw": raw.decode("utf-8", "replace"), "file": os.path.join(self.directory, f)}
            time.sleep(0.2)
        raise AssertionError("no code mail arrived")


def ask(page, action, shots, name):
    """Presses 'Email me a code instead' next to the form; the phrase and the code id shown."""
    page.click(f"button.email-ask[data-for='{action}']")
    page.wait_for_selector(f"form[action='{action}'] .email-gate")
    shots(page, name)
    phrase = page.inner_text(f"form[action='{action}'] .email-phrase")
    code_id = page.get_attribute(f"form[action='{action}'] input[name=email_code_id]", "value")
    return phrase, code_id


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--link", required=True)
    ap.add_argument("--owner", required=True)
    ap.add_argument("--agent", required=True)
    ap.add_argument("--grant", required=True)
    ap.add_argument("--key1", required=True)
    ap.add_argument("--key2", required=True)
    ap.add_argument("--sink", required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--artifacts", required=True)
    args = ap.parse_args()
    base = args.base
    shots = Shots(args.artifacts)
    mails = Mailbox(args.sink)
    key1_path, key2_path = f"/console/keys/{args.key1}/revoke", f"/console/keys/{args.key2}/revoke"
    grant_path, stop_path = f"/console/grants/{args.grant}/revoke", f"/console/agents/{args.agent}/stop"
    codes_asked = 0

    with sync_playwright() as pw, DumpOnFailure(args.artifacts):
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--host-resolver-rules=MAP localhost 127.0.0.1", "--no-sandbox"])
        context = browser.new_context(viewport={"width": 390, "height": 844})
        page = context.new_page()
        LIVE.append(page)
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        cdp, authenticator = add_authenticator(context, page)
        register_and_sign_in(page, cdp, authenticator, base, args.link, args.owner, shots, "owner")
        # The passkey is not at hand any more.
        cdp.send("WebAuthn.removeVirtualAuthenticator", {"authenticatorId": authenticator})

        # 1. The code typed into the form: revokes key 1, once.
        page.goto(f"{base}/console/agents")
        phrase, code_id = ask(page, key1_path, shots, "key1-code-asked")
        codes_asked += 1
        mail = mails.next_code()
        assert phrase in mail["text"], f"the mail shows the screen's phrase {phrase!r}: {mail['text']}"
        assert mail["link"].split("#")[0].endswith(f"/console/email-link/{code_id}"), mail["link"]
        # The code mail carries the code and the link's token, nothing else secret.
        session = [c["value"] for c in context.cookies() if c["name"] == "agentkeys_console"][0]
        csrf = page.get_attribute("input[name=csrf]", "value")
        for secret in (session, csrf):
            assert secret not in mail["raw"], "a session secret in the code mail"
        page.fill(f"form[action='{key1_path}'] input[name=email_code]", mail["code"])
        with page.expect_navigation(url=f"{base}/console/agents?done=key-revoked"):
            page.click(f"form[action='{key1_path}'] button.email-submit")
        shots(page, "key1-revoked")
        # A second use of the same code fails.
        csrf = page.get_attribute("input[name=csrf]", "value")
        status, text = page.evaluate(PLAIN_POST_JS, [key1_path, {"csrf": csrf, "email_code_id": code_id, "email_code": mail["code"]}])
        assert status == 403 and "used already" in text, f"a second use of the code: {status} {text[:300]}"

        # 2. Five wrong codes lock a code; the right one then fails, and so does its link.
        page.goto(f"{base}/console/agents")
        _, code_id = ask(page, key2_path, shots, "key2-code-asked")
        codes_asked += 1
        mail = mails.next_code()
        # Bound to its action: for another action it does nothing, and counts no try.
        page.goto(f"{base}/console/agents")
        csrf = page.get_attribute("input[name=csrf]", "value")
        status, text = page.evaluate(PLAIN_POST_JS, [stop_path, {"csrf": csrf, "email_code_id": code_id, "email_code": mail["code"]}])
        assert status == 403 and "not for this action" in text, f"key 2's code for stopping the agent: {status} {text[:300]}"
        wrong = "000000" if mail["code"] != "000000" else "111111"
        for i in range(5):
            status, _, text = page.evaluate(POST_FORM_JS, [key2_path, {"email_code_id": code_id, "email_code": wrong}])
            assert status == 403 and "Wrong code" in text, f"wrong code {i + 1}: {status}"
        assert "locked" in text, "the fifth wrong code says the code is locked now"
        status, _, text = page.evaluate(POST_FORM_JS, [key2_path, {"email_code_id": code_id, "email_code": mail["code"]}])
        assert status == 403 and "locked" in text, f"the right code after 5 wrong ones: {status} {text[:300]}"
        locked_page = context.new_page()
        locked_page.goto(mail["link"])
        assert "locked" in locked_page.inner_text("#email-state"), locked_page.inner_text("main")
        assert locked_page.locator("#email-link button").count() == 0, "a locked code's page has no button"
        shots(locked_page, "link-locked")
        locked_page.close()
        # The same through the UI once: the answer page a person sees.
        page.goto(f"{base}/console/agents")
        _, code_id2 = ask(page, key2_path, shots, "key2-code-asked-again")
        codes_asked += 1
        mail2 = mails.next_code()
        page.fill(f"form[action='{key2_path}'] input[name=email_code]", wrong if mail2["code"] != wrong else "222222")
        with page.expect_navigation():
            page.click(f"form[action='{key2_path}'] button.email-submit")
        assert "Wrong code" in page.inner_text("main"), page.inner_text("main")
        shots(page, "wrong-code")

        # 3. An expired code fails (its expiry moved into the past in the database, as 10 minutes would).
        db = sqlite3.connect(args.db, timeout=30)
        db.execute("UPDATE owner_email_codes SET expires_at = ? WHERE id = ?", (int(time.time()) - 1, code_id2))
        db.commit()
        db.close()
        page.goto(f"{base}/console/agents")
        status, _, text = page.evaluate(POST_FORM_JS, [key2_path, {"email_code_id": code_id2, "email_code": mail2["code"]}])
        assert status == 403 and "expired" in text, f"an expired code: {status} {text[:300]}"

        # 4. The link: scanner-safe page, the button's POST approves once, the screen finishes.
        page.goto(f"{base}/console/agents")
        phrase, code_id = ask(page, grant_path, shots, "grant-code-asked")
        codes_asked += 1
        mail = mails.next_code()
        # A mail scanner fetches the link (no fragment, no script) ...
        with urllib.request.urlopen(mail["link"].split("#")[0]) as r:
            scanned = r.read().decode()
        assert r.status == 200 and phrase in scanned, "the page shows the phrase"
        # ... and a person opens it on another device (no session), twice.
        phone = browser.new_context(viewport={"width": 390, "height": 844})
        link_page = phone.new_page()
        LIVE.append(link_page)
        for _ in range(2):
            link_page.goto(mail["link"])
            assert link_page.inner_text("#email-phrase") == phrase, "the same phrase as the requesting screen"
            assert "waiting" in link_page.inner_text("#email-state"), link_page.inner_text("main")
        shots(link_page, "link-page")
        # Opening it consumed nothing: the screen cannot finish yet, and the code still can.
        status, _, text = page.evaluate(POST_FORM_JS, [grant_path, {"email_code_id": code_id, "email_code": ""}])
        assert status == 403 and "not approved yet" in text, f"after GETs only: {status} {text[:300]}"
        with link_page.expect_navigation():
            link_page.click("#email-link button[type=submit]")
        assert phrase in link_page.inner_text("#email-approved"), link_page.inner_text("main")
        shots(link_page, "link-approved")
        # A second POST of the button fails.
        token = mail["link"].split("#t=")[1]
        second = link_page.evaluate("""async ([path, token]) => { const r = await fetch(path, { method: "POST", body: new URLSearchParams({ token }) });
            return [r.status, await r.text()]; }""", [f"/console/email-link/{code_id}", token])
        assert second[0] == 400 and "cannot approve" in second[1], f"a second POST: {second[0]}"
        phone.close()
        # The requesting screen finishes the action (code field empty).
        with page.expect_navigation(url=f"{base}/console/agents?done=grant-revoked"):
            page.click(f"form[action='{grant_path}'] button.email-submit")
        shots(page, "grant-revoked")
        status, _, _ = page.evaluate(POST_FORM_JS, [key2_path, {"email_code_id": code_id, "email_code": ""}])
        assert status == 403, "the link's approval was for the grant only, and is spent"

        # 5. Asking for codes stops at the per-owner limit (EMAIL_CODES_PER_OWNER = 10 an hour).
        page.goto(f"{base}/console/agents")
        csrf = page.get_attribute("input[name=csrf]", "value")
        refused = None
        for _ in range(20):
            status, text = page.evaluate("""async ([path, csrf]) => { const r = await fetch("/console/email-code", { method: "POST",
                body: new URLSearchParams({ path, csrf }) }); return [r.status, await r.text()]; }""", [stop_path, csrf])
            if status != 200:
                refused = (status, text)
                break
            codes_asked += 1
        assert refused and refused[0] == 403 and "Too many codes" in refused[1], refused
        assert codes_asked == 10, f"codes issued before the limit: {codes_asked}"

        # The notification settings page (gated by a code too).
        page.goto(f"{base}/console/notifications")
        shots(page, "notifications")
        assert page.locator("input[type=checkbox]").count() == 6

        assert not errors, f"script errors: {errors}"
        browser.close()
    emit({"step": "done", "screenshots": shots.taken, "codes": codes_asked})


if __name__ == "__main__":
    main()
