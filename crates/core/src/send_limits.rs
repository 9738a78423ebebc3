//! Per-agent send guardrails (issue 13 §3): the limits an owner sets on an
//! agent's sending, the decision over what the agent already sent, and hold
//! for review. Pure rules; the store counts (`agentkeys_store::SendGuardrails`,
//! under one lock per agent so several nodes never let more through than the
//! limit) and the sending doors apply the answer.
//!
//! - **Windows slide**: "per hour" is the last [`HOUR_SECS`] seconds, "per day"
//!   and "new recipients per day" the last [`DAY_SECS`]. A refusal carries the
//!   seconds until enough of the window has passed for the same send to fit
//!   (`Retry-After`).
//! - **Every accepted send counts**, held ones included (a held message used
//!   the agent's budget when it asked to send; a rejection does not give it
//!   back).
//! - **A new recipient** is an address (lowercased) this agent never sent a
//!   released message to.
//! - **The bounce pause**: when at least [`BOUNCE_RATE_MIN_FINISHED`]
//!   deliveries of the agent's messages finished in the last day and the
//!   bounced share is at least the owner's percentage, every send is refused
//!   until old bounces leave the window (or the owner changes the limit).
//!
//! ```
//! use agentkeys_core::send_limits::{Limit, SendLimits, SendUsage, Window};
//!
//! let limits = SendLimits { per_hour: Some(2), ..SendLimits::default() };
//! let mut usage = SendUsage::default();
//! assert!(limits.admit(&usage, 0, 1_000).is_ok());
//! usage.hour = Window { count: 2, frees_at: Some(1_600) };
//! let refused = limits.admit(&usage, 0, 1_000).unwrap_err();
//! assert_eq!((refused.limit, refused.retry_after_secs), (Limit::PerHour, 600));
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::auth::SendAuthorized;
use crate::ids::{Address, AgentId, GrantId, KeyId, OwnerId};
use crate::UnixTime;

/// The "per hour" window, in seconds.
pub const HOUR_SECS: i64 = 3_600;
/// The "per day" window (also new recipients and the bounce rate), in seconds.
pub const DAY_SECS: i64 = 86_400;
/// Largest value of a count limit.
pub const MAX_SEND_LIMIT: u32 = 1_000_000;
/// The bounce rate is judged only over at least this many finished
/// (delivered or bounced) deliveries in the last day: two bounces out of
/// three sends say little.
pub const BOUNCE_RATE_MIN_FINISHED: u32 = 10;
/// `Retry-After` of a send refused by the bounce pause: the rate is judged
/// again at every send, so this is when trying again is worth it.
pub const BOUNCE_PAUSE_RETRY_SECS: u64 = 3_600;

/// Which sends the owner reviews before they are signed and queued.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReviewMode {
    /// Nothing is held.
    #[default]
    None,
    /// Every message is held.
    All,
    /// A message with at least one new recipient is held.
    NewRecipients,
}

impl ReviewMode {
    /// `none`, `all` or `new-recipients`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::All => "all",
            Self::NewRecipients => "new-recipients",
        }
    }
}

impl FromStr for ReviewMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Self::None),
            "all" => Ok(Self::All),
            "new-recipients" => Ok(Self::NewRecipients),
            other => Err(format!("{other:?}: give all, new-recipients or none")),
        }
    }
}

/// Why a message was held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HoldReason {
    /// The agent's review mode is `all`.
    ReviewAll,
    /// The message has a recipient the agent never sent to (`new-recipients`).
    NewRecipients,
}

impl HoldReason {
    /// `review-all` or `new-recipients`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReviewAll => "review-all",
            Self::NewRecipients => "new-recipients",
        }
    }
}

impl FromStr for HoldReason {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "review-all" => Ok(Self::ReviewAll),
            "new-recipients" => Ok(Self::NewRecipients),
            other => Err(format!("unknown hold reason {other:?}")),
        }
    }
}

/// The limits an owner set on one agent's sending. `None`: no limit. The
/// default is open: no limit, no review.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendLimits {
    /// Messages per sliding hour.
    #[serde(default)]
    pub per_hour: Option<u32>,
    /// Messages per sliding day.
    #[serde(default)]
    pub per_day: Option<u32>,
    /// New recipients per sliding day.
    #[serde(default)]
    pub new_recipients_per_day: Option<u32>,
    /// Pause sending when this percentage (1-100) or more of the last day's
    /// finished deliveries bounced.
    #[serde(default)]
    pub max_bounce_percent: Option<u32>,
    /// Hold for review.
    #[serde(default)]
    pub review: ReviewMode,
}

/// Which limit refused a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Limit {
    /// Messages per hour.
    PerHour,
    /// Messages per day.
    PerDay,
    /// New recipients per day.
    NewRecipientsPerDay,
    /// The bounce pause.
    BounceRate,
}

impl Limit {
    /// `per-hour`, `per-day`, `new-recipients-per-day` or `bounce-rate`: the
    /// name the refusals, the CLI flags and the audit records use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PerHour => "per-hour",
            Self::PerDay => "per-day",
            Self::NewRecipientsPerDay => "new-recipients-per-day",
            Self::BounceRate => "bounce-rate",
        }
    }
}

/// One sliding window of what the agent sent: how many, and when enough of
/// them will have left it for the send being decided to fit (`None`: it will
/// never fit, e.g. more new recipients than the limit; or nothing has to leave).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    /// Rows in the window now.
    pub count: u32,
    /// When the window will have room for this send.
    pub frees_at: Option<UnixTime>,
}

/// What the store counted for one agent at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendUsage {
    /// Messages accepted in the last hour.
    pub hour: Window,
    /// Messages accepted in the last day.
    pub day: Window,
    /// New recipients of messages accepted in the last day.
    pub new_recipients: Window,
    /// Deliveries of the agent's messages that bounced in the last day.
    pub bounced: u32,
    /// Deliveries that finished (delivered or bounced) in the last day.
    pub finished: u32,
}

/// A send refused by a limit: which, its value, and when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitRefusal {
    /// The limit that refused.
    pub limit: Limit,
    /// Its value (a count, or the bounce percentage).
    pub max: u32,
    /// Seconds until the same send would fit (at least 1).
    pub retry_after_secs: u64,
}

impl fmt::Display for LimitRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.limit {
            Limit::PerHour => write!(f, "per-hour send limit of {} messages reached", self.max),
            Limit::PerDay => write!(f, "per-day send limit of {} messages reached", self.max),
            Limit::NewRecipientsPerDay => write!(f, "limit of {} new recipients per day reached", self.max),
            Limit::BounceRate => write!(f, "sending paused: {}% or more of the last day's deliveries bounced", self.max),
        }?;
        write!(f, "; try again in {} s", self.retry_after_secs)
    }
}

fn retry_after(frees_at: Option<UnixTime>, window: i64, now: UnixTime) -> u64 {
    let at = frees_at.unwrap_or(now + window);
    u64::try_from(at - now).unwrap_or(0).max(1)
}

impl SendLimits {
    /// Whether every value is within its bounds.
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [
            ("per_hour", self.per_hour),
            ("per_day", self.per_day),
            ("new_recipients_per_day", self.new_recipients_per_day),
        ] {
            if value.is_some_and(|v| v > MAX_SEND_LIMIT) {
                return Err(format!("{name}: at most {MAX_SEND_LIMIT}"));
            }
        }
        if self.max_bounce_percent.is_some_and(|p| p == 0 || p > 100) {
            return Err("max_bounce_percent: a percentage from 1 to 100".to_owned());
        }
        Ok(())
    }

    /// Whether a send with `new_recipients` new recipients may go now, given
    /// what the agent sent (`usage`, counted without this send). The bounce
    /// pause is checked first, then the hour, the day and new recipients.
    pub fn admit(&self, usage: &SendUsage, new_recipients: u32, now: UnixTime) -> Result<(), LimitRefusal> {
        if let Some(percent) = self.max_bounce_percent
            && usage.finished >= BOUNCE_RATE_MIN_FINISHED
            && u64::from(usage.bounced) * 100 >= u64::from(percent) * u64::from(usage.finished)
        {
            return Err(LimitRefusal { limit: Limit::BounceRate, max: percent, retry_after_secs: BOUNCE_PAUSE_RETRY_SECS });
        }
        let windows = [
            (Limit::PerHour, self.per_hour, usage.hour, 1, HOUR_SECS),
            (Limit::PerDay, self.per_day, usage.day, 1, DAY_SECS),
            (Limit::NewRecipientsPerDay, self.new_recipients_per_day, usage.new_recipients, new_recipients, DAY_SECS),
        ];
        for (limit, max, window, asked, secs) in windows {
            let Some(max) = max else { continue };
            if asked > 0 && u64::from(window.count) + u64::from(asked) > u64::from(max) {
                return Err(LimitRefusal { limit, max, retry_after_secs: retry_after(window.frees_at, secs, now) });
            }
        }
        Ok(())
    }

    /// Whether an admitted send with `new_recipients` new recipients is held
    /// for the owner's review, and why.
    pub fn holds(&self, new_recipients: u32) -> Option<HoldReason> {
        match self.review {
            ReviewMode::None => None,
            ReviewMode::All => Some(HoldReason::ReviewAll),
            ReviewMode::NewRecipients => (new_recipients > 0).then_some(HoldReason::NewRecipients),
        }
    }

    /// The position (0-based, newest first) of the row whose leaving makes
    /// room for `asked` more under `max`: when the row at this position leaves
    /// the window, at most `max - asked` remain. `None` when `asked > max`
    /// (never fits). Stores use it to compute [`Window::frees_at`].
    pub fn freeing_position(max: u32, asked: u32) -> Option<u32> {
        max.checked_sub(asked)
    }
}

/// Proof that the owner approved one held message: what releasing it (DKIM
/// signing and queueing) requires. It carries the sender's authorization as
/// it was when the message was held, so the released message goes out under
/// the same inbox, agent, key and grant it was submitted with.
///
/// Made only where an approval is recorded: [`ReleaseApproved::recorded`] is
/// called by the stores' `SendGuardrails::decide_held` (SQLite, PostgreSQL) in
/// the transaction that moves the message from `held` to `approved` with its
/// audit record (`grep -rn 'ReleaseApproved::recorded' crates`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseApproved {
    held_id: String,
    sender: SendAuthorized,
}

impl ReleaseApproved {
    /// The approval of held message `held_id`, just recorded. For stores only
    /// (see the type's docs).
    pub fn recorded(
        held_id: &str,
        inbox: Address,
        owner: OwnerId,
        agent: AgentId,
        key_id: KeyId,
        grant_id: GrantId,
    ) -> Self {
        Self { held_id: held_id.to_owned(), sender: SendAuthorized::held(inbox, owner, agent, key_id, grant_id) }
    }

    /// The held message's id.
    pub fn held_id(&self) -> &str {
        &self.held_id
    }

    /// The sender's authorization, for the delivery that releases the message.
    pub fn sender(&self) -> &SendAuthorized {
        &self.sender
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use proptest::prelude::*;

    use super::*;

    const NOW: UnixTime = 1_700_000_000;

    fn usage(hour: u32, day: u32, new: u32) -> SendUsage {
        SendUsage {
            hour: Window { count: hour, frees_at: Some(NOW + 10) },
            day: Window { count: day, frees_at: Some(NOW + 20) },
            new_recipients: Window { count: new, frees_at: Some(NOW + 30) },
            ..SendUsage::default()
        }
    }

    #[test]
    fn open_limits_admit_everything_and_hold_nothing() {
        let open = SendLimits::default();
        assert_eq!(open.admit(&usage(u32::MAX, u32::MAX, u32::MAX), u32::MAX, NOW), Ok(()));
        assert_eq!(open.holds(5), None);
    }

    #[test]
    fn each_limit_refuses_at_its_value_naming_itself() {
        let limits = SendLimits { per_hour: Some(3), per_day: Some(5), new_recipients_per_day: Some(2), ..Default::default() };
        assert_eq!(limits.admit(&usage(2, 4, 1), 1, NOW), Ok(()));
        let refused = |u, n| limits.admit(&u, n, NOW).unwrap_err();
        assert_eq!(refused(usage(3, 3, 0), 0), LimitRefusal { limit: Limit::PerHour, max: 3, retry_after_secs: 10 });
        assert_eq!(refused(usage(2, 5, 0), 0), LimitRefusal { limit: Limit::PerDay, max: 5, retry_after_secs: 20 });
        assert_eq!(refused(usage(0, 0, 1), 2).limit, Limit::NewRecipientsPerDay);
        // No new recipient asked: the new-recipient window does not refuse.
        assert_eq!(limits.admit(&usage(0, 0, 9), 0, NOW), Ok(()));
        // More new recipients than the limit never fit: retry after a whole day.
        let never = SendUsage { new_recipients: Window { count: 0, frees_at: None }, ..SendUsage::default() };
        assert_eq!(limits.admit(&never, 3, NOW).unwrap_err().retry_after_secs, DAY_SECS as u64);
    }

    #[test]
    fn a_limit_of_zero_refuses_every_send() {
        let limits = SendLimits { per_hour: Some(0), ..Default::default() };
        assert_eq!(limits.admit(&SendUsage::default(), 0, NOW).unwrap_err().limit, Limit::PerHour);
    }

    #[test]
    fn the_bounce_pause_needs_enough_finished_deliveries() {
        let limits = SendLimits { max_bounce_percent: Some(20), ..Default::default() };
        let rate = |bounced, finished| SendUsage { bounced, finished, ..SendUsage::default() };
        assert_eq!(limits.admit(&rate(9, BOUNCE_RATE_MIN_FINISHED - 1), 0, NOW), Ok(()), "too few to judge");
        assert_eq!(limits.admit(&rate(1, 10), 0, NOW), Ok(()), "10% < 20%");
        let paused = limits.admit(&rate(2, 10), 0, NOW).unwrap_err();
        assert_eq!((paused.limit, paused.max, paused.retry_after_secs), (Limit::BounceRate, 20, BOUNCE_PAUSE_RETRY_SECS));
        assert!(paused.to_string().contains("20%"), "{paused}");
    }

    #[test]
    fn review_modes_hold_what_they_say() {
        let mode = |review| SendLimits { review, ..Default::default() };
        assert_eq!(mode(ReviewMode::All).holds(0), Some(HoldReason::ReviewAll));
        assert_eq!(mode(ReviewMode::NewRecipients).holds(0), None);
        assert_eq!(mode(ReviewMode::NewRecipients).holds(1), Some(HoldReason::NewRecipients));
        for m in [ReviewMode::None, ReviewMode::All, ReviewMode::NewRecipients] {
            assert_eq!(m.as_str().parse::<ReviewMode>(), Ok(m));
        }
        assert!("sometimes".parse::<ReviewMode>().unwrap_err().contains("new-recipients"));
    }

    #[test]
    fn limits_are_bounded() {
        assert!(SendLimits { per_day: Some(MAX_SEND_LIMIT), ..Default::default() }.validate().is_ok());
        assert!(SendLimits { per_day: Some(MAX_SEND_LIMIT + 1), ..Default::default() }.validate().is_err());
        assert!(SendLimits { max_bounce_percent: Some(0), ..Default::default() }.validate().is_err());
        assert!(SendLimits { max_bounce_percent: Some(101), ..Default::default() }.validate().is_err());
        let json = serde_json::to_string(&SendLimits { review: ReviewMode::NewRecipients, ..Default::default() }).unwrap();
        assert!(json.contains("\"new-recipients\""), "{json}");
    }

    /// Replays a generated sequence of send attempts at increasing times
    /// through `admit` with exact sliding windows: no hour ever holds more
    /// than `per_hour` admitted sends, no day more than `per_day`.
    fn replay(per_hour: u32, per_day: u32, gaps: &[u16]) -> Vec<UnixTime> {
        let limits = SendLimits { per_hour: Some(per_hour), per_day: Some(per_day), ..Default::default() };
        let mut admitted: Vec<UnixTime> = Vec::new();
        let mut now = NOW;
        for gap in gaps {
            now += i64::from(*gap);
            let window = |secs: i64, max: u32| {
                let inside: Vec<UnixTime> = admitted.iter().copied().filter(|t| *t > now - secs).collect();
                let count = u32::try_from(inside.len()).unwrap();
                // Newest first; the row at the freeing position leaves at its time + window.
                let frees_at = SendLimits::freeing_position(max, 1)
                    .and_then(|p| inside.iter().rev().nth(p as usize))
                    .map(|t| t + secs);
                Window { count, frees_at }
            };
            let usage = SendUsage { hour: window(HOUR_SECS, per_hour), day: window(DAY_SECS, per_day), ..Default::default() };
            match limits.admit(&usage, 0, now) {
                Ok(()) => admitted.push(now),
                Err(refusal) => {
                    // Retrying exactly when told must fit (for the limit that refused).
                    let later = now + i64::try_from(refusal.retry_after_secs).unwrap();
                    let secs = if refusal.limit == Limit::PerHour { HOUR_SECS } else { DAY_SECS };
                    let max = if refusal.limit == Limit::PerHour { per_hour } else { per_day };
                    let inside = admitted.iter().filter(|t| **t > later - secs).count();
                    assert!(max == 0 || inside < max as usize, "retry_after too short: {refusal:?}");
                }
            }
        }
        admitted
    }

    proptest! {
        #[test]
        fn generated_send_sequences_never_exceed_the_limits(
            per_hour in 0u32..6,
            extra_day in 0u32..10,
            gaps in proptest::collection::vec(prop_oneof![0u16..5, 0u16..900, 3000u16..20000], 1..200),
        ) {
            let per_day = per_hour + extra_day;
            let admitted = replay(per_hour, per_day, &gaps);
            for (i, t) in admitted.iter().enumerate() {
                let in_hour = admitted[..=i].iter().filter(|s| **s > t - HOUR_SECS).count();
                let in_day = admitted[..=i].iter().filter(|s| **s > t - DAY_SECS).count();
                prop_assert!(in_hour <= per_hour as usize, "hour ending {t}: {in_hour} > {per_hour}");
                prop_assert!(in_day <= per_day as usize, "day ending {t}: {in_day} > {per_day}");
            }
        }
    }
}
