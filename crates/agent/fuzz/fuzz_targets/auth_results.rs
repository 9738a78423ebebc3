//! The RFC 8601 parser on arbitrary header values: never panics, and what it
//! returns respects its limits.
#![no_main]

use agentkeys_agent::auth_results::{
    self, Authentication, MAX_PROPERTIES_PER_RESULT, MAX_RESULTS_PER_HEADER,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(h) = auth_results::parse(value) {
        assert!(!h.authserv_id.is_empty());
        assert!(h.results.len() <= MAX_RESULTS_PER_HEADER);
        for r in &h.results {
            assert!(r.properties.len() <= MAX_PROPERTIES_PER_RESULT);
            assert_eq!(r.method, r.method.to_ascii_lowercase());
        }
    }
    let a = Authentication::evaluate([value], "mx.agents.localhost", Some("example.com"));
    // Only a header of ours can authenticate.
    if a.authenticated {
        assert!(a.verdicts_present);
    }
});
