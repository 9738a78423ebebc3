//! The process's file descriptors, shared out between the listeners.
//!
//! Every open connection holds a descriptor, and so do the store (SQLite
//! files, blob writes), the listeners and the DNS sockets. When they run out,
//! `accept` fails with `EMFILE` on every listener at once: idle HTTP clients
//! could stop the MX. So `serve` raises the soft `RLIMIT_NOFILE` to the hard
//! limit, keeps [`FD_RESERVE`] for the process itself, and gives each listener
//! family a cap that fits in what is left ([`share`]): SMTP keeps at least half
//! of it, HTTP gets at most the rest. A listener over its cap refuses the
//! connection cleanly (SMTP `421`, HTTP `503`) instead of hitting `EMFILE`.

/// Descriptors kept for everything but client connections: stdio, the four
/// listeners, the runtime's epoll and eventfds, SQLite's database and WAL files
/// per pooled connection, blob writes and their directory fsyncs, DNS and
/// delivery sockets. A fresh server holds 27 (measured with
/// `ls /proc/<pid>/fd`), so this leaves room for the store to grow.
pub(crate) const FD_RESERVE: u64 = 128;

/// The connection caps the listeners run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Share {
    /// The soft `RLIMIT_NOFILE` the caps were computed from.
    pub(crate) limit: u64,
    /// SMTP connections over all SMTP listeners.
    pub(crate) smtp: usize,
    /// HTTP connections.
    pub(crate) http: usize,
}

/// Splits `limit` descriptors: [`FD_RESERVE`] for the process, then the
/// configured caps when both fit; otherwise HTTP gets at most what SMTP's cap
/// leaves, and never more than half, and SMTP the rest. Neither cap grows, and
/// `FD_RESERVE + smtp + http <= limit` whenever `limit` exceeds the reserve.
pub(crate) fn share(limit: u64, smtp_cap: usize, http_cap: usize) -> Share {
    let available = usize::try_from(limit.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX);
    let http = http_cap.min(available.saturating_sub(smtp_cap).max(available / 2));
    let smtp = smtp_cap.min(available - http);
    // A process with (almost) no descriptors still gets one connection each,
    // and its accept loops back off on EMFILE.
    Share { limit, smtp: smtp.max(1), http: http.max(1) }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (as Go's runtime does) and
/// returns the soft limit in force afterwards.
pub(crate) fn raise_nofile_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        if let Err(err) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(%err, "cannot raise the soft file descriptor limit to the hard limit");
        }
    }
    // `None` is "unlimited".
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn plenty_of_descriptors_leave_the_caps_as_configured() {
        assert_eq!(share(1 << 20, 4096, 1024), Share { limit: 1 << 20, smtp: 4096, http: 1024 });
        assert_eq!(share(FD_RESERVE + 5120, 4096, 1024), Share { limit: FD_RESERVE + 5120, smtp: 4096, http: 1024 });
    }

    #[test]
    fn a_low_limit_keeps_smtp_at_least_half() {
        // The case: 512 descriptors, the default caps (4096 SMTP, 1024 HTTP).
        let s = share(512, 4096, 1024);
        assert_eq!((s.smtp, s.http), (192, 192));
        // A small SMTP cap leaves the rest to HTTP.
        let s = share(512, 100, 1024);
        assert_eq!((s.smtp, s.http), (100, 284));
    }

    /// Over generated limits and caps: the reserve and both shares fit in the
    /// limit, neither cap grows, SMTP keeps at least half of what it asked for
    /// or of what there is, and when both caps fit, nothing changes.
    #[test]
    fn the_shares_fit_in_the_limit() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(15);
        for _ in 0..10_000 {
            let limit = rng.gen_range(FD_RESERVE + 2..200_000);
            let (smtp_cap, http_cap) = (rng.gen_range(1..20_000), rng.gen_range(1..20_000));
            let s = share(limit, smtp_cap, http_cap);
            let available = usize::try_from(limit - FD_RESERVE).unwrap();
            assert!(FD_RESERVE + (s.smtp + s.http) as u64 <= limit, "{limit} {smtp_cap} {http_cap}: {s:?}");
            assert!(s.smtp <= smtp_cap && s.http <= http_cap, "{s:?}");
            assert!(s.smtp >= smtp_cap.min(available / 2), "{limit} {smtp_cap} {http_cap}: {s:?}");
            if smtp_cap + http_cap <= available {
                assert_eq!((s.smtp, s.http), (smtp_cap, http_cap));
            }
        }
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_limit() {
        let soft = raise_nofile_limit();
        let now = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert_eq!(Some(soft), now.current.or(Some(u64::MAX)));
        assert_eq!(now.current, now.maximum);
    }
}
