#!/usr/bin/env bash
# The whole test suite: installs the real peers the tests talk to (swaks, Python),
# starts the services they need, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v swaks >/dev/null 2>&1 || missing+=(swaks)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v sqlite3 >/dev/null 2>&1 || missing+=(sqlite3)  # audit tamper tests edit the database
command -v curl >/dev/null 2>&1 || missing+=(curl)  # HTTP tests against the real server (owner gate, broker)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)  # the HTTPS tests check TLS versions and fingerprints with s_client/x509
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)  # the multi-node test's L4 balancer in front of the nodes (crates/cli/tests/multinode.rs)
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)  # the multi-node test creates its database and reads the index with psql
command -v dovecot >/dev/null 2>&1 || missing+=(dovecot-imapd)  # the IMAP/SMTP mail backend's provider: IMAP with IDLE (crates/cli/tests/imap_backend.rs)
[ -x /usr/lib/postfix/sbin/master ] || missing+=(postfix)  # ... and its submission server with AUTH (same test); started by the test, never as a service
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing test peers: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" libio-socket-ssl-perl libnet-ssleay-perl >/dev/null
  else
    echo "missing test peers: ${missing[*]} (install them, e.g. sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi
# swaks needs these Perl modules for STARTTLS.
if ! perl -MIO::Socket::SSL -e1 2>/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libio-socket-ssl-perl libnet-ssleay-perl >/dev/null
fi

# The independent JWT verifier (tests/resources/verify_jwt.py) needs PyJWT and cryptography.
if ! python3 -c "import jwt, cryptography" 2>/dev/null; then
  echo "installing Python test modules: pyjwt cryptography"
  python3 -m pip install --quiet pyjwt cryptography
fi

# The independent DKIM verifier (tests/resources/verify_dkim.py) needs dkimpy, and PyNaCl for Ed25519.
if ! python3 -c "import dkim, nacl" 2>/dev/null; then
  echo "installing Python test modules: dkimpy pynacl"
  python3 -m pip install --quiet dkimpy pynacl
fi

# The receiving MTA of the delivery tests (tests/resources/smtp_sink.py) is aiosmtpd.
if ! python3 -c "import aiosmtpd" 2>/dev/null; then
  echo "installing Python test modules: aiosmtpd"
  python3 -m pip install --quiet aiosmtpd
fi

# The MCP tests drive `agentkeys mcp` with the official MCP Python SDK and check
# its tool schemas with jsonschema (tests/resources/mcp_client.py).
if ! python3 -c "import mcp, jsonschema, sys; from importlib.metadata import version; sys.exit(int(version(\"mcp\").split(\".\")[0]) != 2)" 2>/dev/null; then
  echo "installing Python test modules: mcp jsonschema"
  python3 -m pip install --quiet "mcp>=2.3,<3" jsonschema
fi

# The webhook tests' receiver (tests/resources/webhook_receiver.py) verifies with the
# Standard Webhooks reference library.
if ! python3 -c "import standardwebhooks" 2>/dev/null; then
  echo "installing Python test modules: standardwebhooks"
  python3 -m pip install --quiet standardwebhooks
fi

# The SES backend test (crates/cli/tests/ses_backend.rs) runs moto's AWS emulator server (S3, SES, STS).
if ! command -v moto_server >/dev/null 2>&1; then
  echo "installing Python test modules: moto[server]"
  python3 -m pip install --quiet "moto[server]>=5,<6"
fi

# The independent DNS client of the testdns tests (tests/resources/dns_query.py) is dnspython.
if ! python3 -c "import dns.message" 2>/dev/null; then
  echo "installing Python test modules: dnspython"
  python3 -m pip install --quiet dnspython
fi

# The OpenAPI property tests (crates/cli/tests/schemathesis.rs) run Schemathesis 4 against the real server.
if ! python3 -c "import sys; from importlib.metadata import version; sys.exit(int(version('schemathesis').split('.')[0]) != 4)" 2>/dev/null \
   || ! command -v schemathesis >/dev/null 2>&1; then
  echo "installing Python test modules: schemathesis"
  python3 -m pip install --quiet "schemathesis>=4,<5"
fi

# The HTTP limit tests run the server under `prlimit` (util-linux).
command -v prlimit >/dev/null 2>&1 || {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq util-linux >/dev/null
}

# The S3 blob store tests (crates/store/tests/s3.rs) run against s3s-fs, a real
# S3-compatible server that checks SigV4 signatures, presigned URLs included.
command -v s3s-fs >/dev/null 2>&1 || {
  echo "installing test peer: s3s-fs"
  cargo install --quiet s3s-fs --version 0.14.1 --features binary --locked
}

# The console's browser test (crates/cli/tests/console_browser.rs) drives Debian's
# Chromium with Playwright (PyPI, using the system browser: no browser download)
# and checks accessibility with axe-core (npm), kept outside the work tree.
command -v chromium >/dev/null 2>&1 || {
  echo "installing test peer: chromium"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
}
if ! python3 -c "import playwright.sync_api" 2>/dev/null; then
  echo "installing Python test modules: playwright"
  python3 -m pip install --quiet "playwright>=1.50,<2"
fi
axe_dir="${AGENTKEYS_AXE_DIR:-/opt/agentkeys-test-node}"
if [ ! -f "$axe_dir/node_modules/axe-core/axe.min.js" ]; then
  command -v npm >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
  echo "installing test module: axe-core (npm)"
  mkdir -p "$axe_dir"
  npm install --silent --no-audit --no-fund --prefix "$axe_dir" "axe-core@4" >/dev/null
fi
export AGENTKEYS_AXE="$axe_dir/node_modules/axe-core/axe.min.js"

# The PostgreSQL metadata store tests (crates/store/tests/postgres.rs) need a real
# server that lets the test user create databases (each test makes its own
# `ak_test_<ulid>` and drops it): AGENTKEYS_TEST_DATABASE_URL, by default the
# trust-auth server at 127.0.0.1:5432.
pg_url="${AGENTKEYS_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
if command -v pg_isready >/dev/null 2>&1 && ! pg_isready -q -d "$pg_url"; then
  # The machine's own cluster (Debian's packaging), started if it is down.
  if [ -z "${AGENTKEYS_TEST_DATABASE_URL:-}" ] && [ "$(id -u)" -eq 0 ] && command -v pg_ctlcluster >/dev/null 2>&1; then
    for version in $(ls /etc/postgresql 2>/dev/null); do
      echo "starting PostgreSQL $version/main"
      pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    done
    for _ in $(seq 1 30); do pg_isready -q -d "$pg_url" && break; sleep 1; done
  fi
  if ! pg_isready -q -d "$pg_url"; then
    echo "no PostgreSQL answers at $pg_url: start one (trust auth for the test user) or set AGENTKEYS_TEST_DATABASE_URL" >&2
    exit 1
  fi
fi

exec cargo test --workspace --locked --no-fail-fast "$@"
