// The AgentKeys console's only script: WebAuthn. It converts between the
// server's JSON (base64url strings, as webauthn-rs writes them) and the
// browser's ArrayBuffers, and asks the authenticator when a form needs it.
// Everything else on the pages works without script.
"use strict";
(function () {
  function enc(buf) {
    const bytes = new Uint8Array(buf);
    let s = "";
    for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
    return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }
  function dec(text) {
    const b64 = text.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((text.length + 3) % 4);
    const s = atob(b64);
    const out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out.buffer;
  }
  function creationOptions(o) {
    const pk = o.publicKey;
    pk.challenge = dec(pk.challenge);
    pk.user.id = dec(pk.user.id);
    (pk.excludeCredentials || []).forEach(function (c) { c.id = dec(c.id); });
    return pk;
  }
  function requestOptions(o) {
    const pk = o.publicKey;
    pk.challenge = dec(pk.challenge);
    (pk.allowCredentials || []).forEach(function (c) { c.id = dec(c.id); });
    return pk;
  }
  function registration(cred) {
    return {
      id: cred.id,
      rawId: enc(cred.rawId),
      type: cred.type,
      response: {
        attestationObject: enc(cred.response.attestationObject),
        clientDataJSON: enc(cred.response.clientDataJSON),
      },
      extensions: cred.getClientExtensionResults(),
    };
  }
  function assertion(cred) {
    return {
      id: cred.id,
      rawId: enc(cred.rawId),
      type: cred.type,
      response: {
        authenticatorData: enc(cred.response.authenticatorData),
        clientDataJSON: enc(cred.response.clientDataJSON),
        signature: enc(cred.response.signature),
        userHandle: cred.response.userHandle ? enc(cred.response.userHandle) : null,
      },
      extensions: {},
    };
  }
  function showError(text) {
    const el = document.getElementById("gate-error");
    if (el) {
      el.textContent = text;
      el.hidden = false;
    }
  }
  async function post(url, body, json) {
    const response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: json ? { "Content-Type": "application/json" } : {},
      body: json ? JSON.stringify(body) : body,
    });
    if (!response.ok) throw new Error("the server refused (" + response.status + ")");
    return response.json();
  }

  const login = document.getElementById("login");
  if (login) {
    login.addEventListener("submit", async function (ev) {
      ev.preventDefault();
      try {
        const begun = await post("/console/login/begin", { owner: login.elements.owner.value }, true);
        const cred = await navigator.credentials.get({ publicKey: requestOptions(begun.options) });
        const done = await post("/console/login/finish", { owner: begun.owner, challenge: begun.challenge, credential: assertion(cred) }, true);
        window.location.assign(done.redirect);
      } catch (e) {
        showError("Sign-in failed: " + e.message);
      }
    });
  }

  const register = document.getElementById("register");
  if (register) {
    register.addEventListener("submit", async function (ev) {
      ev.preventDefault();
      const token = new URLSearchParams(window.location.hash.slice(1)).get("t") || "";
      try {
        const begun = await post("/console/passkey/begin", { token: token }, true);
        const cred = await navigator.credentials.create({ publicKey: creationOptions(begun.options) });
        const done = await post("/console/passkey/finish", {
          token: token, challenge: begun.challenge, name: register.elements.name.value, credential: registration(cred),
        }, true);
        window.location.assign(done.redirect);
      } catch (e) {
        showError("Registration failed: " + e.message);
      }
    });
  }

  // The fields a gate's challenge or mailed code is bound to: the form's
  // path and its own fields, never the gate's.
  const GATE_FIELDS = ["challenge", "assertion", "email_code_id", "email_code"];
  function actionFields(form) {
    const fields = new URLSearchParams();
    fields.append("path", form.getAttribute("action"));
    new FormData(form).forEach(function (value, name) {
      if (GATE_FIELDS.indexOf(name) < 0) fields.append(name, value);
    });
    return fields;
  }
  function element(tag, attrs, text) {
    const el = document.createElement(tag);
    Object.keys(attrs).forEach(function (k) { el.setAttribute(k, attrs[k]); });
    if (text) el.textContent = text;
    return el;
  }
  let emailForms = 0;
  // The email fallback: a code mailed to the owner for exactly this form's action.
  async function askEmailCode(form) {
    try {
      const asked = await post("/console/email-code", actionFields(form), false);
      const n = ++emailForms;
      let panel = form.querySelector(".email-gate");
      if (panel) panel.remove();
      panel = element("div", { class: "email-gate", role: "group", "aria-label": "Emailed code" });
      const said = element("p", {}, "We mailed a 6-digit code and a link to your address. The mail shows the phrase ");
      said.appendChild(element("strong", { class: "email-phrase" }, asked.phrase));
      said.appendChild(document.createTextNode("; use it only if it does."));
      panel.appendChild(said);
      panel.appendChild(element("label", { for: "email-code-" + n }, "Code from the mail"));
      panel.appendChild(element("input", { id: "email-code-" + n, type: "text", name: "email_code", inputmode: "numeric", autocomplete: "one-time-code", maxlength: "6" }));
      panel.appendChild(element("input", { type: "hidden", name: "email_code_id", value: asked.id }));
      panel.appendChild(element("button", { type: "submit", class: "email-submit" }, "Approve with the emailed code"));
      panel.appendChild(element("p", { class: "hint" }, "Or open the link in the mail, press its button, then press this button with the code field empty."));
      form.appendChild(panel);
    } catch (e) {
      showError("No code was mailed: " + e.message);
    }
  }

  document.querySelectorAll("form.gated").forEach(function (form) {
    // Next to the form, not in it: the form keeps one button until a code is asked for.
    const email = element("button", { type: "button", class: "email-ask secondary", "data-for": form.getAttribute("action") }, "Email me a code instead");
    email.addEventListener("click", function () { askEmailCode(form); });
    form.after(email);
    form.addEventListener("submit", async function (ev) {
      // Approving with the mailed code: the form goes as it is.
      if (ev.submitter && ev.submitter.classList.contains("email-submit")) return;
      ev.preventDefault();
      try {
        const begun = await post("/console/gate", actionFields(form), false);
        const cred = await navigator.credentials.get({ publicKey: requestOptions(begun.options) });
        form.elements.challenge.value = begun.challenge;
        form.elements.assertion.value = JSON.stringify(assertion(cred));
        const panel = form.querySelector(".email-gate");
        if (panel) panel.remove();
        form.submit();
      } catch (e) {
        showError("The passkey check did not complete: " + e.message);
      }
    });
  });

  // The emailed link's page: its token is in the fragment (never sent in a
  // request or a referrer); the button's POST carries it. Loading the page
  // sends nothing.
  const linkToken = document.getElementById("email-link-token");
  if (linkToken) {
    linkToken.value = new URLSearchParams(window.location.hash.slice(1)).get("t") || "";
  }
})();
