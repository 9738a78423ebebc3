//! One-time code and magic-link extraction.
