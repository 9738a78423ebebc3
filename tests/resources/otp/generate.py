#!/usr/bin/env python3
"""Writes the OTP corpus: positive/*.eml with *.expected.json, negative/*.eml.

The .eml files are the source of truth (committed); this script only makes the
MIME encodings (quoted-printable, base64, ISO-2022-JP, GB2312, ISO-8859-1)
correct and reproducible. All mails are written for this project; brands and
addresses are invented (.example domains). Run from anywhere:

    python3 tests/resources/otp/generate.py

Expected-result fields (crates/agent/tests/otp_corpus.rs checks them):
  kind          numeric_code | alphanumeric_code | magic_link
  code / link   the top-level value
  ambiguous     bool
  authenticated bool (our MX hostname in the corpus is mx.agents.localhost)
  candidates    optional: the exact set of candidate values
  min_confidence optional (default 0.6 when not ambiguous)
"""

import json
import os
from email import charset as email_charset
from email.header import Header
from email.mime.application import MIMEApplication
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import compat32

CRLF = compat32.clone(linesep="\r\n")

HERE = os.path.dirname(os.path.abspath(__file__))
OUR_MX = "mx.agents.localhost"
TO = "bot-7k2m9q4x1z@agents.localhost"
DATE = "Sat, 21 Nov 2026 09:05:00 +0000"


def ar_pass(domain):
    return (f"{OUR_MX};\r\n\tdkim=pass header.d={domain} header.s=s1 header.b=Zm9vYmFy;\r\n"
            f"\tspf=pass ({OUR_MX}: domain of bounce@{domain} designates 127.0.0.1 as permitted sender) "
            f"smtp.mailfrom=bounce@{domain};\r\n\tdmarc=pass header.from={domain} policy.dmarc=reject")


def text_part(body, subtype="plain", cs="utf-8", cte=None):
    """A text part with an explicit transfer encoding (qp, base64, 8bit, 7bit)."""
    if cte is None:
        cte = "7bit" if all(ord(c) < 128 for c in body) else "qp"
    c = email_charset.Charset(cs)
    c.body_encoding = {"qp": email_charset.QP, "base64": email_charset.BASE64}.get(cte)
    if cte in ("7bit", "8bit"):
        c.body_encoding = None
    part = MIMEText(body, subtype, c)
    if cte == "8bit":
        part.replace_header("Content-Transfer-Encoding", "8bit")
    return part


def message(name, from_, subject, parts, *, kind="alternative", headers=(), subject_charset=None,
            attachments=()):
    if len(parts) == 1 and not attachments:
        msg = parts[0]
    else:
        body = MIMEMultipart(kind, boundary=f"=_{name}_alt")
        for p in parts:
            body.attach(p)
        if attachments:
            msg = MIMEMultipart("mixed", boundary=f"=_{name}_mix")
            msg.attach(body if len(parts) > 1 else parts[0])
            for a in attachments:
                msg.attach(a)
        else:
            msg = body
    for k, v in headers:
        msg[k] = v
    msg["From"] = from_
    msg["To"] = TO
    msg["Subject"] = Header(subject, subject_charset).encode() if subject_charset else subject
    msg["Date"] = DATE
    msg["Message-ID"] = f"<{name}@corpus.example>"
    if "MIME-Version" not in msg:
        msg["MIME-Version"] = "1.0"
    # Headers added last come last; put the trace headers first, as our MX does.
    items = msg._headers
    trace = [h for h in items if h[0] in ("Authentication-Results", "Received")]
    rest = [h for h in items if h[0] not in ("Authentication-Results", "Received")]
    rest_top = [h for h in rest if not h[0].lower().startswith("content-") and h[0] != "MIME-Version"]
    rest_mime = [h for h in rest if h not in rest_top]
    msg._headers = trace + rest_top + [h for h in rest_mime if h[0] == "MIME-Version"] + \
        [h for h in rest_mime if h[0] != "MIME-Version"]
    return msg.as_bytes(policy=CRLF)


def write(kind, name, raw, expected=None):
    d = os.path.join(HERE, kind)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"{name}.eml"), "wb") as f:
        f.write(raw)
    if expected is not None:
        with open(os.path.join(d, f"{name}.expected.json"), "w") as f:
            json.dump(expected, f, indent=2, ensure_ascii=False, sort_keys=True)
            f.write("\n")


def code(value, kind="numeric_code", authenticated=False, **extra):
    e = {"kind": kind, "code": value, "ambiguous": False, "authenticated": authenticated}
    e.update(extra)
    return e


def link(value, authenticated=False, **extra):
    e = {"kind": "magic_link", "link": value, "ambiguous": False, "authenticated": authenticated}
    e.update(extra)
    return e


FOOTER_HTML = """
<table role="presentation" width="100%"><tr><td style="font-size:11px;color:#888">
Acme Widgets Inc., 1 Market Street, Suite 300, San Francisco, CA 94105<br>
<a href="https://acme.example/unsubscribe?u=8f3k2j5h6g7d9s0a1q">Unsubscribe</a> &middot;
<a href="https://acme.example/privacy">Privacy policy</a> &middot;
<a href="https://twitter.com/acme_example">Twitter</a><br>
&copy; 2026 Acme Widgets Inc. All rights reserved.
</td></tr></table>"""

FOOTER_TEXT = """--
Acme Widgets Inc., 1 Market Street, Suite 300, San Francisco, CA 94105
Unsubscribe: https://acme.example/unsubscribe?u=8f3k2j5h6g7d9s0a1q
(c) 2026 Acme Widgets Inc."""


def positives():
    acme = "Acme <no-reply@acme.example>"

    write("positive", "p01_code_in_subject", message(
        "p01", acme, "Your Acme code is 482913",
        [text_part("Hi,\r\n\r\nSomeone (hopefully you) asked to sign in to Acme from Firefox on Linux.\r\n"
                   "Enter the code from the subject line to continue.\r\n\r\n" + FOOTER_TEXT)],
        headers=[("Authentication-Results", ar_pass("acme.example"))]),
        code("482913", authenticated=True, sources=["subject"]))

    write("positive", "p02_plain_text", message(
        "p02", "Ledgerly <security@ledgerly.example>", "Verify your email address",
        [text_part("Welcome to Ledgerly!\r\n\r\nYour verification code is: 739201\r\n\r\n"
                   "This code expires in 10 minutes. If you did not sign up, ignore this email.\r\n")]),
        code("739201"))

    digits = "".join(f'<td style="border:1px solid #ccc;padding:8px 12px;font-size:28px">{d}</td>' for d in "518274")
    write("positive", "p03_html_table_one_digit_per_cell", message(
        "p03", acme, "Confirm it's you",
        [text_part(f"""<!DOCTYPE html><html><head><style>td {{ font-family: Arial }}</style>
<title>Confirm it's you</title></head><body>
<span style="display:none">Use this code to finish signing in.</span>
<h2>Here is your verification code</h2>
<table role="presentation" cellpadding="0" cellspacing="4"><tr>{digits}</tr></table>
<p>The code is valid for 15 minutes.</p>
{FOOTER_HTML}</body></html>""", "html")]),
        code("518274"))

    write("positive", "p04_split_digits_spaces", message(
        "p04", "Nimbus <auth@nimbus.example>", "Nimbus sign-in",
        [text_part("Your Nimbus one-time code:\r\n\r\n    5 1 8 2 7 4\r\n\r\nDo not share this code with anyone.\r\n")]),
        code("518274"))

    write("positive", "p05_split_hyphen", message(
        "p05", "Parcelly <hello@parcelly.example>", "Your login code",
        [text_part("Your login code is 392-817. It expires in 5 minutes.\r\n")]),
        code("392817"))

    write("positive", "p06_split_space_groups_below_keyword", message(
        "p06", "Tesselate <team@tesselate.example>", "Tesselate security check",
        [text_part("Hello,\r\n\r\nPlease use the following verification code:\r\n\r\n481 920\r\n\r\n"
                   "If you didn't request this, you can ignore this message.\r\n")]),
        code("481920"))

    url7 = "https://app.flowbase.example/auth/magic?token=eyJ0eXAiOiJKV1Qi9fK2mQ7xR4pL8wZ1&email=bot"
    write("positive", "p07_magic_link_html_button", message(
        "p07", "Flowbase <login@flowbase.example>", "Sign in to Flowbase",
        [text_part(f"Sign in to Flowbase\r\n\r\nClick the link below to sign in:\r\n{url7}\r\n\r\n"
                   "This link expires in 15 minutes and can only be used once.\r\n\r\n" + FOOTER_TEXT),
         text_part(f"""<html><body><h1>Sign in to Flowbase</h1>
<p>Click the button below to sign in. This link expires in 15 minutes.</p>
<p><a href="{url7.replace('&', '&amp;')}" style="background:#4f46e5;color:#fff;padding:12px 24px">Sign in to Flowbase</a></p>
<p>Trouble? <a href="https://flowbase.example/help">Visit our help center</a></p>
{FOOTER_HTML}</body></html>""", "html")]),
        link(url7))

    url8 = "https://accounts.quillnote.example/confirm-email/6d1f9a82c47b4e0f93a2b8c1d7e5f604"
    write("positive", "p08_magic_link_plain_text", message(
        "p08", "Quillnote <accounts@quillnote.example>", "Please confirm your email",
        [text_part(f"Hi there,\r\n\r\nThanks for signing up for Quillnote. Please confirm your email address "
                   f"by opening this link:\r\n\r\n{url8}\r\n\r\nIf you didn't create an account, ignore this email.\r\n\r\n"
                   "Quillnote, 22 Rue des Lilas, 75011 Paris\r\n")]),
        link(url8))

    write("positive", "p09_multipart_quoted_printable", message(
        "p09", "Orbitly <noreply@orbitly.example>", "Your Orbitly verification code",
        [text_part("Your Orbitly verification code is 604218.\r\n\r\nThis code will expire in 10 minutes. "
                   "For your security, never share this code \u2014 Orbitly staff will never ask for it.\r\n", cte="qp"),
         text_part("<html><body><p style=\"font-family:Helvetica,Arial,sans-serif;font-size:16px\">"
                   "Your Orbitly verification code is</p><p style=\"font-size:32px;letter-spacing:6px;"
                   "font-weight:bold\">604218</p><p>This code will expire in 10 minutes. "
                   "For your security, never share this code \u2014 Orbitly staff will never ask for it.</p>"
                   "</body></html>", "html", cte="qp")]),
        code("604218", sources=["html", "text"]))

    write("positive", "p10_base64_html", message(
        "p10", "Cobalt Bank <alerts@cobalt.example>", "Your one-time passcode",
        [text_part("<html><body><table width=\"600\"><tr><td><h3>One-time passcode</h3></td></tr>"
                   "<tr><td>Use this passcode to complete your request: <b>27735108</b></td></tr>"
                   "<tr><td>Questions? Call us at 1-800-555-0199.</td></tr></table></body></html>",
                   "html", cte="base64")]),
        code("27735108"))

    write("positive", "p11_german_quoted_printable", message(
        "p11", "Kontowerk <service@kontowerk.example>", "Ihr Bestätigungscode",
        [text_part("Hallo,\r\n\r\nIhr Bestätigungscode lautet: 604931\r\n\r\nDer Code ist 10 Minuten gültig. "
                   "Bitte geben Sie ihn nicht an Dritte weiter.\r\n\r\nKontowerk GmbH, Hauptstraße 5, 10115 Berlin\r\n"
                   "Telefon: 030 1234567\r\n", cte="qp")],
        subject_charset="utf-8"),
        code("604931"))

    write("positive", "p12_french", message(
        "p12", "Panierbio <compte@panierbio.example>", "Votre code de vérification",
        [text_part("Bonjour,\r\n\r\nVotre code de vérification est : 277351\r\n\r\nCe code expire dans 10 minutes.\r\n"
                   "Numéro de commande précédente : 88412093 (pour information).\r\n", cte="qp")],
        subject_charset="utf-8"),
        code("277351"))

    write("positive", "p13_spanish_base64", message(
        "p13", "Mercadito <cuenta@mercadito.example>", "Tu código de verificación",
        [text_part("Hola,\r\n\r\nTu código de verificación es 918273.\r\n\r\nEl código caduca en 10 minutos. "
                   "Si no has solicitado este código, ignora este mensaje.\r\n", cte="base64")],
        subject_charset="utf-8"),
        code("918273"))

    write("positive", "p14_japanese_iso2022jp", message(
        "p14", "Sakura Shop <info@sakura.example>", "【Sakura】認証コードのお知らせ",
        [text_part("いつもご利用いただきありがとうございます。\r\n\r\n認証コード：583920\r\n\r\n"
                   "このコードの有効期限は10分です。\r\nお問い合わせ番号：2026-1121-0042\r\n",
                   cs="iso-2022-jp", cte="7bit")],
        subject_charset="iso-2022-jp"),
        code("583920"))

    write("positive", "p15_chinese_gb2312", message(
        "p15", "Yunpan <service@yunpan.example>", "验证码通知",
        [text_part("尊敬的用户：\r\n\r\n您的验证码是271845，5分钟内有效。请勿向任何人泄露。\r\n\r\n客服电话：400-820-1234\r\n",
                   cs="gb2312", cte="base64")],
        subject_charset="utf-8"),
        code("271845"))

    write("positive", "p16_alphanumeric", message(
        "p16", "Vaultline <security@vaultline.example>", "Your temporary password",
        [text_part("Your one-time password: K7QX9P\r\n\r\nUse it within 15 minutes.\r\n")]),
        code("K7QX9P", kind="alphanumeric_code"))

    write("positive", "p17_alphanumeric_hyphen", message(
        "p17", "Gridwise <accounts@gridwise.example>", "Gridwise account verification",
        [text_part("To verify your account, enter this code:\r\n\r\n7KQ2-X9MZ\r\n\r\nThe code is case-insensitive.\r\n")]),
        code("7KQ2-X9MZ", kind="alphanumeric_code"))

    pdf = MIMEApplication(b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Size 123456>>\n%%EOF\n", "pdf")
    pdf.add_header("Content-Disposition", "attachment", filename="welcome-guide.pdf")
    write("positive", "p18_with_attachment", message(
        "p18", "Stackhouse <hello@stackhouse.example>", "Welcome to Stackhouse - verify your email",
        [text_part("Welcome aboard!\r\n\r\nYour email verification code: 650142\r\n\r\nWe attached a short guide to get you started.\r\n"),
         text_part("<p>Welcome aboard!</p><p>Your email verification code: <strong>650142</strong></p>"
                   "<p>We attached a short guide to get you started.</p>", "html")],
        attachments=[pdf]),
        code("650142", sources=["html", "text"]))

    write("positive", "p19_code_before_keyword", message(
        "p19", "Pictogram <security@pictogram.example>", "Pictogram",
        [text_part("604931 is your Pictogram code. Don't share it.\r\n")]),
        code("604931"))

    write("positive", "p20_letter_prefix", message(
        "p20", "Goggle <no-reply@accounts.goggle.example>", "Goggle verification code",
        [text_part("G-719304 is your Goggle verification code.\r\n")]),
        code("719304"))

    write("positive", "p21_code_among_noise", message(
        "p21", "Shoply <orders@shoply.example>", "Confirm your new device",
        [text_part("Hi Sam,\r\n\r\nWe noticed a sign-in to your account from a new device on Nov 21, 2026 at 10:30 AM.\r\n"
                   "Your security code is 447120.\r\n\r\nYour last order #99812 (total $19.99) shipped on 11/19/2026.\r\n"
                   "Tracking number: 1Z999AA10123456784\r\nNeed help? Call +1 (415) 555-0100.\r\n")]),
        code("447120"))

    write("positive", "p22_two_codes_ambiguous", message(
        "p22", "Keyforge <auth@keyforge.example>", "Your Keyforge codes",
        [text_part("Your login code is 118844.\r\nIf that one does not work, use your backup code: 552901.\r\n")]),
        {"kind": "numeric_code", "code": "118844", "ambiguous": True, "authenticated": False,
         "candidates": ["118844", "552901"]})

    write("positive", "p23_pin", message(
        "p23", "Doorly <access@doorly.example>", "Your Doorly PIN",
        [text_part("Your PIN: 4821\r\nEnter it on the keypad within 5 minutes.\r\n")]),
        code("4821"))

    write("positive", "p24_code_in_own_block_after_label", message(
        "p24", "Helio <no-reply@helio.example>", "Helio",
        [text_part("<html><body><div class=\"card\"><div class=\"label\">Your passcode</div>"
                   "<div class=\"code\" style=\"font-size:30px\">903417</div>"
                   "<div class=\"muted\">Expires in 10 minutes.</div></div></body></html>", "html")]),
        code("903417"))

    url25 = "https://id.marlow.example/verify?c=903417&t=Qm9vZjM0YzVkNmU3ZjhnOWgw"
    write("positive", "p25_code_and_link", message(
        "p25", "Marlow <id@marlow.example>", "Verify your Marlow account",
        [text_part(f"Your verification code is 903417.\r\n\r\nOr verify with one click: {url25}\r\n"),
         text_part(f"<p>Your verification code is <b>903417</b>.</p><p>Or <a href=\"{url25.replace('&', '&amp;')}\">"
                   "verify with one click</a>.</p>", "html")]),
        code("903417", candidates=["903417", url25]))

    write("positive", "p26_forged_authentication_results", message(
        "p26", "Cobalt Bank <alerts@cobalt.example>", "Your Cobalt security code",
        [text_part("Your Cobalt security code is 661204.\r\n")],
        headers=[("Authentication-Results",
                  "mx.attacker.example; dkim=pass header.d=cobalt.example; dmarc=pass header.from=cobalt.example")]),
        code("661204", authenticated=False))

    write("positive", "p27_authenticated_aligned_dkim", message(
        "p27", "Acme <no-reply@acme.example>", "Acme verification code",
        [text_part("Your Acme verification code: 310577\r\n")],
        headers=[("Authentication-Results",
                  f"{OUR_MX};\r\n\tdkim=pass header.d=mail.acme.example header.s=k1 header.b=AbCdEf;\r\n"
                  "\tspf=softfail (mx.agents.localhost: domain of bounce@esp.example reports soft fail for 127.0.0.1) "
                  "smtp.mailfrom=bounce@esp.example;\r\n\tdmarc=none header.from=acme.example policy.dmarc=none")]),
        code("310577", authenticated=True))

    write("positive", "p28_dmarc_fail", message(
        "p28", "Acme <no-reply@acme.example>", "Acme verification code",
        [text_part("Your Acme verification code: 310578\r\n")],
        headers=[("Authentication-Results",
                  f"{OUR_MX};\r\n\tdkim=fail (body hash did not verify) header.d=acme.example header.s=k1;\r\n"
                  "\tspf=fail smtp.mailfrom=a@acme.example;\r\n\tdmarc=fail (policy not aligned) header.from=acme.example "
                  "policy.dmarc=reject")]),
        code("310578", authenticated=False))

    write("positive", "p29_fullwidth_digits", message(
        "p29", "Hoshi <noreply@hoshi.example>", "確認コード",
        [text_part("ご本人確認のため、以下の確認コードを入力してください。\r\n\r\n確認コード：８４７２１９\r\n", cte="base64")],
        subject_charset="utf-8"),
        code("847219"))

    write("positive", "p30_korean", message(
        "p30", "Hanbit <no-reply@hanbit.example>", "인증번호 안내",
        [text_part("인증번호 [482913]를 입력해 주세요.\r\n인증번호는 3분간 유효합니다.\r\n", cte="base64")],
        subject_charset="utf-8"),
        code("482913"))

    write("positive", "p31_russian", message(
        "p31", "Pochta <robot@pochta.example>", "Код подтверждения",
        [text_part("Здравствуйте!\r\n\r\nВаш код подтверждения: 730194\r\n\r\nКод действует 10 минут.\r\n", cte="qp")],
        subject_charset="utf-8"),
        code("730194"))

    write("positive", "p32_portuguese", message(
        "p32", "Carteira <seguranca@carteira.example>", "Código de verificação",
        [text_part("Olá,\r\n\r\nO seu código de verificação é 552718.\r\n\r\nNão partilhe este código.\r\n", cte="qp")],
        subject_charset="utf-8"),
        code("552718"))

    spans = "".join(f"<span class=\"d\">{d}</span>" for d in "394817")
    write("positive", "p33_html_digit_spans", message(
        "p33", "Lumen <hi@lumen.example>", "Lumen sign-in code",
        [text_part(f"<html><body><p>Your sign-in code:</p><p class=\"code\">{spans}</p></body></html>", "html")]),
        code("394817"))

    url34 = "https://konto.wolke.example/bestaetigen?t=7f3a9c2e1b5d4f8a0c6e"
    write("positive", "p34_german_magic_link", message(
        "p34", "Wolke <konto@wolke.example>", "Bitte bestätigen Sie Ihre E-Mail-Adresse",
        [text_part(f"""<html><body><p>Willkommen bei Wolke!</p>
<p>Bitte bestätigen Sie Ihre E-Mail-Adresse, um Ihr Konto zu aktivieren:</p>
<p><a href="{url34}">E-Mail-Adresse bestätigen</a></p>
<p><a href="https://wolke.example/datenschutz">Datenschutz</a> | <a href="https://wolke.example/abmelden?u=7f3a9c2e1b5d4f8a0c6e">Newsletter abmelden</a></p>
</body></html>""", "html", cte="qp")],
        subject_charset="utf-8"),
        link(url34))

    write("positive", "p35_dutch", message(
        "p35", "Fietsdeel <info@fietsdeel.example>", "Je verificatiecode",
        [text_part("Hoi,\r\n\r\nJe verificatiecode is 381920.\r\n\r\nDeze code verloopt over 10 minuten.\r\n")]),
        code("381920"))

    write("positive", "p36_subject_code_html_body", message(
        "p36", "Trailmap <no-reply@trailmap.example>", "847362 is your Trailmap verification code",
        [text_part("<html><body><p>Hi explorer,</p><p>Use the code in the subject to finish creating your account.</p>"
                   "<p>Happy trails,<br>The Trailmap team</p></body></html>", "html")]),
        code("847362", sources=["subject"]))

    write("positive", "p37_latin1_quoted_printable", message(
        "p37", "Banque Azur <securite@azur.example>", "Code de sécurité",
        [text_part("Bonjour,\r\n\r\nVotre code de sécurité : 620184\r\n\r\nValable 5 minutes.\r\n", cs="iso-8859-1", cte="qp")],
        subject_charset="iso-8859-1"),
        code("620184"))

    url38 = "https://www.reelhub.example/account/activate/A1b2C3d4E5f6G7h8"
    write("positive", "p38_activation_link_text_and_html", message(
        "p38", "Reelhub <accounts@reelhub.example>", "Activate your Reelhub account",
        [text_part(f"Activate your account:\r\n{url38}\r\n\r\nManage preferences: https://www.reelhub.example/preferences?u=A1b2C3d4E5f6G7h8\r\n"),
         text_part(f"<p><a href=\"{url38}\">Activate account</a></p><p><a href=\"https://www.reelhub.example/preferences?u=A1b2C3d4E5f6G7h8\">"
                   "Email preferences</a></p>", "html")]),
        link(url38, sources=["html", "text"]))

    write("positive", "p39_ours_below_a_foreign_header", message(
        "p39", "Cobalt Bank <alerts@cobalt.example>", "Your Cobalt security code",
        [text_part("Your Cobalt security code is 661205.\r\n")],
        headers=[("Authentication-Results", "relay.example; none"),
                 ("Authentication-Results", ar_pass("cobalt.example"))]),
        code("661205", authenticated=False))


def negatives():
    write("negative", "n01_newsletter", message(
        "n01", "The Weekly Byte <news@byte.example>", "5 tips for a faster 2026",
        [text_part("THE WEEKLY BYTE \u2014 Issue 212\r\n\r\n1. Why 10,000 developers switched editors\r\n"
                   "2. Benchmarks: 3.5x faster builds in 2026\r\n3. Interview with the team behind v4.2\r\n\r\n"
                   "Read online: https://byte.example/issues/212\r\n" + FOOTER_TEXT),
         text_part("<html><body><h1>The Weekly Byte</h1><p>Issue 212 &middot; November 2026</p>"
                   "<ol><li>Why 10,000 developers switched editors</li><li>Benchmarks: 3.5x faster builds</li></ol>"
                   "<p><a href=\"https://byte.example/issues/212?utm_source=newsletter&amp;uid=9f8e7d6c5b4a3921\">Read more</a></p>"
                   + FOOTER_HTML + "</body></html>", "html")]))

    write("negative", "n02_order_receipt", message(
        "n02", "Shoply <orders@shoply.example>", "Order confirmation #112233",
        [text_part("Thanks for your order!\r\n\r\nOrder number: 5523871\r\nOrder date: 21/11/2026\r\n\r\n"
                   "1 x Wireless mouse      $24.99\r\n2 x USB-C cable        $19.98\r\nSubtotal: $44.97\r\n"
                   "Tax: $3.60\r\nTotal: $48.57\r\n\r\nYour confirmation number is 448812.\r\n"
                   "Questions? Reply to this email or call 1-800-555-0134.\r\n")]))

    write("negative", "n03_shipping_tracking", message(
        "n03", "Parcelly <updates@parcelly.example>", "Your package is on its way",
        [text_part("Good news! Your package has shipped.\r\n\r\nTracking number: 1Z999AA10123456784\r\n"
                   "Carrier tracking ID: 940011189922385500\r\nEstimated delivery: 11/24/2026 between 14:00 and 18:00\r\n"
                   "Track your parcel: https://parcelly.example/track/1Z999AA10123456784\r\n")]))

    write("negative", "n04_phone_numbers", message(
        "n04", "Support <support@helpdesk.example>", "We tried to reach you",
        [text_part("Hello,\r\n\r\nWe tried to call you about your support request.\r\nPlease call us back at (415) 555-0132, "
                   "+44 20 7946 0958 or 0800 123 4567.\r\nFax: 030 12345678\r\nOur hours: 9:00-17:30 Mon-Fri.\r\n")]))

    ics = MIMEBase("text", "calendar", method="REQUEST", charset="utf-8")
    ics.set_payload("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Corpus//EN\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\n"
                    "UID:20261124T103000Z-4021@calendar.example\r\nDTSTAMP:20261121T090500Z\r\n"
                    "DTSTART:20261124T103000Z\r\nDTEND:20261124T111500Z\r\nSUMMARY:Quarterly review\r\n"
                    "LOCATION:Room 4021\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n")
    write("negative", "n05_calendar_invite", message(
        "n05", "Dana <dana@corp.example>", "Invitation: Quarterly review @ Tue 24 Nov 2026 10:30 - 11:15 (UTC)",
        [text_part("You have been invited to: Quarterly review\r\nWhen: Tuesday 24 Nov 2026 10:30 \u2013 11:15 (UTC)\r\n"
                   "Where: Room 4021, Building 7\r\nJoin by phone: +1 646 558 8656, meeting ID 845 1234 5678\r\n"), ics],
        kind="mixed"))

    write("negative", "n06_german_invoice", message(
        "n06", "Stadtwerk <rechnung@stadtwerk.example>", "Ihre Rechnung 2026-0142",
        [text_part("Sehr geehrte Kundin, sehr geehrter Kunde,\r\n\r\nanbei Ihre Rechnung Nr. 2026-0142.\r\n"
                   "Kundennummer: 448812\r\nRechnungsbetrag: 1.234,56 \u20ac\r\nFällig am: 05.12.2026\r\n"
                   "IBAN: DE89 3704 0044 0532 0130 00\r\nBitte bestätigen Sie den Eingang nicht; "
                   "die Zahlung erfolgt per Lastschrift.\r\n", cte="qp")],
        subject_charset="utf-8"))

    write("negative", "n07_bank_notification", message(
        "n07", "Cobalt Bank <alerts@cobalt.example>", "Card transaction",
        [text_part("A purchase of $1,250.00 was made with your card ending in 4821 on 21 Nov 2026.\r\n"
                   "Account number: 12345678, sort code 12-34-56.\r\nIf you don't recognise it, call 0345 600 2290.\r\n")]))

    write("negative", "n08_promo_code", message(
        "n08", "Shoply <deals@shoply.example>", "25% off everything this weekend",
        [text_part("Black Friday is here!\r\n\r\nUse code WINTER25 at checkout for 25% off.\r\n"
                   "Or use promo code 2026 for free shipping on orders over $50.\r\nOffer ends 30/11/2026.\r\n")]))

    write("negative", "n09_password_changed_notice", message(
        "n09", "Ledgerly <security@ledgerly.example>", "Your password was changed",
        [text_part("Your Ledgerly password was changed on 21 Nov 2026 at 09:05 UTC.\r\n\r\n"
                   "If this wasn't you, call us at 0800 123 456 or reset it here: https://ledgerly.example/reset\r\n")]))

    write("negative", "n10_chinese_order_shipped", message(
        "n10", "Taomall <service@taomall.example>", "您的订单已发货",
        [text_part("亲爱的顾客：\r\n\r\n您的订单 202611210042 已发货。\r\n快递单号：SF1234567890\r\n"
                   "订单金额：¥ 298.00\r\n客服电话：400-820-1234\r\n", cte="base64")],
        subject_charset="utf-8"))

    write("negative", "n11_japanese_receipt", message(
        "n11", "Sakura Shop <info@sakura.example>", "ご注文ありがとうございます",
        [text_part("ご注文番号：123-4567890\r\nご注文日：2026年11月21日\r\n合計金額：3,980円\r\n"
                   "お届け予定：11月24日 14:00〜16:00\r\nお問い合わせ：03-1234-5678\r\n", cs="iso-2022-jp", cte="7bit")],
        subject_charset="iso-2022-jp"))

    write("negative", "n12_french_delivery", message(
        "n12", "Colisimo <suivi@colis.example>", "Votre colis arrive",
        [text_part("Bonjour,\r\n\r\nVotre colis 6A12345678901 sera livré le 24/11/2026 entre 14h et 18h.\r\n"
                   "Numéro de suivi : 6A12345678901\r\nAdresse : 12 rue de la Paix, 75002 Paris\r\n", cte="qp")],
        subject_charset="utf-8"))

    write("negative", "n13_spanish_invoice", message(
        "n13", "Luzbit <facturas@luzbit.example>", "Tu factura de noviembre",
        [text_part("Hola,\r\n\r\nFactura nº 2026/00123\r\nImporte: 45,90 \u20ac\r\nCliente: 7788123\r\n"
                   "Fecha de cargo: 05/12/2026\r\n", cte="qp")],
        subject_charset="utf-8"))

    write("negative", "n14_flight_booking", message(
        "n14", "SkyLark Air <booking@skylark.example>", "Booking confirmed: QX7K2P",
        [text_part("Your booking is confirmed.\r\n\r\nBooking reference: QX7K2P\r\nFlight SL 4541 departs 10:35 "
                   "from gate B42, seat 23A.\r\nTicket number: 220-4481123456\r\nBaggage: 1 x 23 kg\r\n")]))

    write("negative", "n15_event_ticket", message(
        "n15", "Tixly <tickets@tixly.example>", "Your tickets for Saturday",
        [text_part("<html><body><h2>Your tickets</h2><table><tr><td>Event</td><td>Jazz night</td></tr>"
                   "<tr><td>Date</td><td>28.11.2026, 20:00</td></tr><tr><td>Ticket</td><td>4482 9913</td></tr>"
                   "<tr><td>Row / Seat</td><td>12 / 7</td></tr><tr><td>Price</td><td>&euro;39.00</td></tr></table>"
                   "<p>Show the QR code 558812 at the entrance.</p></body></html>", "html")]))

    write("negative", "n16_code_review_notification", message(
        "n16", "Forgehub <notifications@forgehub.example>", "[acme/widgets] Fix the login form (#4821)",
        [text_part("@sam commented on pull request #4821:\r\n\r\n> The code in commit 3f9a2b7c breaks line 1042.\r\n"
                   "Error code 500 when the form has 10000 entries.\r\n\r\nReply to this email directly or view it on "
                   "Forgehub: https://forgehub.example/acme/widgets/pull/4821#issuecomment-998877\r\n")]))

    write("negative", "n17_welcome_after_verification", message(
        "n17", "Quillnote <accounts@quillnote.example>", "Your email is verified",
        [text_part("<html><body><p>Thanks for verifying your email address!</p><p>Your account is ready. "
                   "<a href=\"https://quillnote.example/dashboard\">Log in to your dashboard</a>.</p>"
                   "<p>You are member 120443 of our community.</p>" + FOOTER_HTML + "</body></html>", "html")]))

    write("negative", "n18_stock_alert", message(
        "n18", "MarketWatcher <alerts@markets.example>", "Markets close higher",
        [text_part("Dow 44,128.20 (+1.2%)\r\nNasdaq 19,874.55 (+0.8%)\r\nEUR/USD 1.0842\r\n"
                   "Volume: 4,120,004,311 shares\r\n")]))

    write("negative", "n19_appointment_reminder", message(
        "n19", "Praxis Dr. Weber <termine@praxis.example>", "Terminerinnerung",
        [text_part("Ihr Termin ist am Dienstag, 24. November 2026 um 14:30 Uhr.\r\nAdresse: Hauptstraße 5, 10115 Berlin\r\n"
                   "Tel. 030 1234567\r\nBitte bringen Sie Ihre Versichertenkarte mit.\r\n", cte="qp")],
        subject_charset="utf-8"))

    write("negative", "n20_zip_and_account", message(
        "n20", "City Utilities <billing@utilities.example>", "Your account summary",
        [text_part("Service address: 742 Evergreen Terrace, Springfield, OR 97403\r\nZip code: 97403\r\n"
                   "Account ID: 88412093\r\nAmount due: 84.10 USD by 12/15/2026\r\n")]))


def button(url, label, lang="en", intro=""):
    """An HTML mail whose only action is one button (plus the usual footer)."""
    return (f'<html lang="{lang}"><body><table role="presentation" width="100%"><tr><td align="center">'
            f'<img src="https://cdn.example.com/logo.png" alt="Example" width="120"><br>{intro}'
            f'<table role="presentation"><tr><td style="background:#1a73e8;border-radius:6px">'
            f'<a href="{url}" style="color:#fff;padding:12px 24px;display:inline-block">{label}</a>'
            f'</td></tr></table></td></tr></table>' + FOOTER_HTML + '</body></html>')


def issue11():
    """Magic-link-only mails (a button and nothing else to act on) and thread
    replies whose quoted history holds an old code (issue 11 section 1)."""
    ex = "Example <no-reply@example.com>"
    buttons = [
        ("p40_button_only_sign_in", "en", "Sign in to Example", "Sign in to Example",
         "https://links.example.com/ls/click?upn=u001.Zk3Jd9aQ2mXy8pLk7Rt5Vw", ""),
        ("p41_button_only_verify_email", "en", "Verify email", "Please verify your email address",
         "https://example.com/e/c/7fKq2LmX9pRt3ZwY8vBn", ""),
        ("p42_button_only_confirm_account", "en", "Confirm your account", "Welcome to Example",
         "https://example.com/c/aB3dE5fG7hJ9kL2mN4pQ", "Thanks for signing up.<br>"),
        ("p43_button_only_german", "de", "Konto bestätigen", "Willkommen bei Example",
         "https://example.com/k/8fK2mQ9xLp3Rt7VwZ5", "Danke für Ihre Anmeldung.<br>"),
        ("p44_button_only_french", "fr", "Confirmer votre compte", "Bienvenue chez Example",
         "https://example.com/f/Qp81Zt7wXk29fLm3", "Merci de votre inscription.<br>"),
        ("p45_button_only_spanish", "es", "Iniciar sesión en Example", "Tu enlace de acceso",
         "https://example.com/s/Lm3Qp81Zt7wXk29f", ""),
        ("p46_button_only_japanese", "ja", "メールアドレスを確認", "Exampleへようこそ",
         "https://example.com/j/Zt7wXk29fLm3Qp81", "ご登録ありがとうございます。<br>"),
        ("p47_button_only_chinese", "zh", "验证邮箱", "欢迎使用 Example",
         "https://example.com/z/Xk29fLm3Qp81Zt7w", "感谢您的注册。<br>"),
    ]
    for name, lang, label, subject, url, intro in buttons:
        write("positive", name, message(
            name[:3], ex, subject, [text_part(button(url, label, lang, intro), "html", cte="qp")],
            subject_charset="utf-8" if any(ord(c) > 127 for c in subject) else None),
            link(url))

    old = "Your verification code is 123456. It expires in 10 minutes."
    write("positive", "p48_thread_quoted_old_code_text", message(
        "p48", ex, "Re: Your Example verification code",
        [text_part("Your new verification code is 654321.\r\n\r\n"
                   "On Sat, 21 Nov 2026 at 09:00, Example <no-reply@example.com> wrote:\r\n"
                   f"> {old}\r\n>\r\n> The Example team\r\n")]),
        code("654321", candidates=["654321"]))
    write("positive", "p49_thread_quoted_old_code_html", message(
        "p49", ex, "Re: Your Example verification code",
        [text_part("<html><body><p>Your new verification code is <b>908172</b>.</p>"
                   "<div class=\"gmail_quote\"><div class=\"gmail_attr\">On Sat, 21 Nov 2026 at 09:00, Example wrote:</div>"
                   f"<blockquote class=\"gmail_quote\"><p>{old}</p></blockquote></div></body></html>", "html")]),
        code("908172", candidates=["908172"]))
    write("positive", "p50_outlook_original_message", message(
        "p50", ex, "RE: code",
        [text_part("Here is your verification code: 778899\r\n\r\n-----Original Message-----\r\n"
                   "From: Example <no-reply@example.com>\r\nSent: Saturday, November 21, 2026 9:00 AM\r\n"
                   "Subject: code\r\n\r\nYour verification code is 112233.\r\n")]),
        code("778899", candidates=["778899"]))
    write("positive", "p51_thread_quoted_german", message(
        "p51", ex, "AW: Ihr Bestätigungscode",
        [text_part("Ihr neuer Bestätigungscode lautet 246810.\r\n\r\n"
                   "Am Sa., 21. Nov. 2026 um 09:00 Uhr schrieb Example <no-reply@example.com>:\r\n"
                   "> Ihr Bestätigungscode lautet 135790.\r\n", cte="qp")],
        subject_charset="utf-8"),
        code("246810", candidates=["246810"]))
    new_url = "https://example.com/auth/magic?token=N3wT0k3nAbCdEf123456"
    write("positive", "p52_thread_quoted_old_link", message(
        "p52", ex, "Re: Sign in to Example",
        [text_part(f"<html><body><p>Here is a fresh link:</p><p><a href=\"{new_url}\">Sign in to Example</a></p>"
                   "<blockquote><p>Sign in with this link:</p>"
                   "<p><a href=\"https://example.com/auth/magic?token=0ldT0k3nZyXwVu654321\">Sign in to Example</a></p>"
                   "</blockquote></body></html>", "html")]),
        link(new_url, candidates=[new_url]))
    write("negative", "n21_reply_with_only_a_quoted_code", message(
        "n21", "Sam <sam@friends.example>", "Re: Your Example verification code",
        [text_part("Thanks, that worked!\r\n\r\nOn Sat, 21 Nov 2026 at 09:00, Example <no-reply@example.com> wrote:\r\n"
                   f"> {old}\r\n")]))


if __name__ == "__main__":
    positives()
    negatives()
    issue11()
