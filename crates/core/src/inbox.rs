//! Inbox status.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Whether an inbox takes mail. Only `Active` inboxes receive or send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InboxStatus {
    /// Receives and sends.
    Active,
    /// Turned off by its owner or the operator.
    Disabled,
    /// Turned off for abuse or policy.
    Suspended,
}

impl InboxStatus {
    /// The stored and printed name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Disabled => "disabled",
            Self::Suspended => "suspended",
        }
    }
}

impl fmt::Display for InboxStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for InboxStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "active" => Ok(Self::Active),
            "disabled" => Ok(Self::Disabled),
            "suspended" => Ok(Self::Suspended),
            other => Err(format!("unknown inbox status {other:?}: expected active, disabled or suspended")),
        }
    }
}
