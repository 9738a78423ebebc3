//! A parsed view of a raw message.
