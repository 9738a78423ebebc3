//! The `Received:` trace header (RFC 5321 §4.4) prepended to every stored copy.

use std::net::IpAddr;

use agentkeys_core::time::rfc5322;
use ulid::Ulid;

/// How the message came in, for the `with` clause (RFC 3848).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Protocol {
    /// `EHLO` rather than `HELO`.
    pub(crate) extended: bool,
    /// Under TLS.
    pub(crate) tls: bool,
    /// Authenticated.
    pub(crate) authenticated: bool,
}

impl Protocol {
    fn keyword(self) -> &'static str {
        match (self.extended, self.tls, self.authenticated) {
            (false, false, _) => "SMTP",
            (false, true, _) => "SMTPS",
            (true, false, false) => "ESMTP",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "ESMTPA",
            (true, true, true) => "ESMTPSA",
        }
    }
}

/// Keeps a client-supplied name printable and free of comment delimiters.
pub(crate) fn sanitize_helo(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '(' && c != ')' && c != '\\' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// `Received: from <helo> (<ip>)\r\n\tby <hostname> with <proto> id <ulid>;\r\n\t<date>\r\n`
pub(crate) fn received_header(
    helo: &str,
    peer: IpAddr,
    hostname: &str,
    protocol: Protocol,
    id: Ulid,
    unix_secs: i64,
) -> String {
    let helo = if helo.is_empty() { "unknown" } else { helo };
    format!(
        "Received: from {helo} ({peer})\r\n\tby {hostname} with {} id {id};\r\n\t{}\r\n",
        protocol.keyword(),
        rfc5322(unix_secs)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_shape() {
        let p = Protocol {
            extended: true,
            tls: true,
            authenticated: true,
        };
        let h = received_header(
            "client.test",
            "192.0.2.1".parse().unwrap(),
            "mx.test",
            p,
            Ulid::nil(),
            0,
        );
        assert_eq!(
            h,
            "Received: from client.test (192.0.2.1)\r\n\tby mx.test with ESMTPSA id 00000000000000000000000000;\r\n\tThu, 1 Jan 1970 00:00:00 +0000\r\n"
        );
        assert_eq!(sanitize_helo("a(b)\u{e9}"), "a?b??");
    }
}
