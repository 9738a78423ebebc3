//! What `serve` tells owners by mail on its own (issue 12), through
//! [`Notifier`] (`crates/api/src/notify.rs`): a bounded sweep every
//! `notices.sweep_interval` for grants and keys expiring within
//! [`EXPIRY_NOTICE_SECS`] and agents whose refused AUTHs in one hour reach
//! [`REFUSED_AUTH_THRESHOLD`], and a verification of the whole audit chain
//! every `notices.audit_interval`. Each notice is sent once across every
//! node: its key is marked in the store (`mark_notice_sent`) before it is
//! queued (at most once: a failed queueing is logged, not retried).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use agentkeys_api::notify::{Notice, NoticeKind, Notifier};
use agentkeys_audit::{Actor, Outcome};
use agentkeys_core::time::rfc3339;
use agentkeys_core::send_limits::{BOUNCE_RATE_MIN_FINISHED, DAY_SECS};
use agentkeys_core::{AgentId, OwnerId, UnixTime};
use agentkeys_store::MetadataStore;
use tokio_util::sync::CancellationToken;

/// Grants and keys expiring within this many seconds are announced (3 days).
pub(crate) const EXPIRY_NOTICE_SECS: i64 = 3 * 86_400;
/// Refused AUTHs of one agent within one clock hour that make a notice.
pub(crate) const REFUSED_AUTH_THRESHOLD: u32 = 10;
/// The most notices one sweep sends (the rest wait for the next sweep).
pub(crate) const MAX_NOTICES_PER_SWEEP: usize = 100;
/// The most audit records one sweep reads for refused AUTHs.
pub(crate) const MAX_AUDIT_SCAN: u32 = 10_000;
/// Audit records read per page.
const AUDIT_PAGE: u32 = 1_000;
/// Guardrail notices read per owner and sweep (issue 13 §3's `owner_notices`).
const GUARD_NOTICE_PAGE: u32 = 100;
/// Guardrail notices older than this when first read (after a restart) are
/// not mailed any more.
pub(crate) const GUARD_NOTICE_MAX_AGE_SECS: i64 = 86_400;
/// An agent whose finished deliveries of the last day (at least
/// [`BOUNCE_RATE_MIN_FINISHED`]) bounced at this share or more gets its owner a
/// `bounces` notice, once per agent and UTC day, whatever limits the owner set:
/// the owner hears of a bouncing agent without having set
/// `--max-bounce-percent` (which pauses the agent; this only tells).
pub(crate) const DEFAULT_BOUNCE_NOTICE_PERCENT: u32 = 10;
/// Queue rows (newest first) read per owner and sweep for the bounce rate.
pub(crate) const BOUNCE_SCAN: u32 = 2_000;
/// The audit operation of an SMTP/HTTP send AUTH (`submission::auth_audit`).
const OP_SUBMISSION_AUTH: &str = "submission.auth";

/// Counts refused AUTHs per agent and clock hour from the audit log.
#[derive(Debug, Default)]
pub(crate) struct RefusedAuths {
    after: u64,
    counts: HashMap<(AgentId, i64), u32>,
}

impl RefusedAuths {
    /// Counts the refusals in `records` at or after `since`; returns the
    /// (agent, hour) pairs that reached the threshold with this batch.
    pub(crate) fn count(&mut self, records: &[agentkeys_audit::AuditRecord], since: UnixTime) -> Vec<(AgentId, i64)> {
        let mut crossed = Vec::new();
        for r in records {
            self.after = self.after.max(r.seq);
            if r.ts < since || r.operation != OP_SUBMISSION_AUTH || r.outcome != Outcome::Denied {
                continue;
            }
            let Actor::Agent(agent) = &r.actor else { continue };
            let n = self.counts.entry((agent.clone(), r.ts.div_euclid(3600))).or_insert(0);
            *n += 1;
            if *n == REFUSED_AUTH_THRESHOLD {
                crossed.push((agent.clone(), r.ts.div_euclid(3600)));
            }
        }
        let oldest = since.div_euclid(3600);
        self.counts.retain(|(_, hour), _| *hour >= oldest);
        crossed
    }
}

/// Runs the sweeps until `shutdown`.
pub(crate) async fn run(
    notifier: Arc<Notifier>,
    meta: Arc<dyn MetadataStore>,
    sweep: Duration,
    audit_every: Duration,
    shutdown: CancellationToken,
) {
    let mut refused = RefusedAuths::default();
    let mut guard_cursors = HashMap::new();
    // Start from the records of the last two hours' worth of scanning at most.
    if let Ok(head) = meta.audit_head().await {
        refused.after = head.seq.saturating_sub(u64::from(MAX_AUDIT_SCAN));
    }
    let mut sweep_tick = tokio::time::interval(sweep.max(Duration::from_secs(1)));
    let mut audit_tick = tokio::time::interval(audit_every.max(Duration::from_secs(1)));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = sweep_tick.tick() => {
                let now = crate::now();
                if let Err(e) = expiring(&notifier, meta.as_ref(), now).await {
                    tracing::warn!(error = %e, "expiry notices: the sweep failed");
                }
                if let Err(e) = refused_auths(&notifier, meta.as_ref(), &mut refused, now).await {
                    tracing::warn!(error = %e, "refused-AUTH notices: the sweep failed");
                }
                if let Err(e) = guardrail_notices(&notifier, meta.as_ref(), &mut guard_cursors, now).await {
                    tracing::warn!(error = %e, "send-limit notices: the sweep failed");
                }
                if let Err(e) = bounce_rates(&notifier, meta.as_ref(), now).await {
                    tracing::warn!(error = %e, "bounce notices: the sweep failed");
                }
            }
            _ = audit_tick.tick() => {
                if let Err(e) = audit_chain(&notifier, meta.as_ref()).await {
                    tracing::warn!(error = %e, "audit notices: the verification failed to run");
                }
            }
        }
    }
}

async fn agent_names(meta: &dyn MetadataStore) -> anyhow::Result<HashMap<String, (OwnerId, Option<String>)>> {
    Ok(meta.list_agents(None).await?.into_iter().map(|a| (a.id.as_str().to_owned(), (a.owner, a.name))).collect())
}

fn label(id: &str, name: Option<&String>) -> String {
    match name {
        Some(n) => format!("\"{n}\" ({id})"),
        None => id.to_owned(),
    }
}

/// One notice per grant or key expiring within [`EXPIRY_NOTICE_SECS`], once.
pub(crate) async fn expiring(notifier: &Notifier, meta: &dyn MetadataStore, now: UnixTime) -> anyhow::Result<usize> {
    let soon = meta.expiring_credentials(now, now + EXPIRY_NOTICE_SECS).await?;
    let names = agent_names(meta).await?;
    let mut sent = 0;
    for c in soon {
        if sent >= MAX_NOTICES_PER_SWEEP {
            break;
        }
        if !notifier.wants(&c.owner, NoticeKind::Expiring).await? {
            continue;
        }
        let key = format!("expiring/{}/{}/{}", c.kind, c.id, c.expires_at);
        if !meta.mark_notice_sent(&c.owner, &key, now).await? {
            continue;
        }
        let agent = label(&c.agent, names.get(&c.agent).and_then(|(_, n)| n.as_ref()));
        let hours = (c.expires_at - now).max(0) / 3600;
        let mut paragraphs = vec![format!(
            "The {} {} of agent {agent} expires at {} (in about {hours} hours).",
            c.kind,
            c.id,
            rfc3339(c.expires_at)
        )];
        if let Some(pattern) = &c.pattern {
            paragraphs.push(format!("It covers {pattern}."));
        }
        paragraphs.push(if c.kind == "grant" {
            format!("To keep it, extend it (at most 30 days): agentkeys grant change {} --ttl 30d, or in the console.", c.id)
        } else {
            "When it expires the agent can no longer sign in with it; pair the agent again or issue a new key.".to_owned()
        });
        let mut notice = Notice::new(NoticeKind::Expiring, format!("A {} of agent {agent} expires soon", c.kind), paragraphs);
        if let Some(origin) = notifier.origin() {
            notice = notice.with_link("Open your agents", format!("{origin}/console/agents"));
        }
        match notifier.notify(&c.owner, &notice, now).await {
            Ok(_) => sent += 1,
            Err(e) => tracing::warn!(error = %e, owner = %c.owner, "an expiry notice was not sent"),
        }
    }
    Ok(sent)
}

/// Reads the audit records since the last sweep (at most [`MAX_AUDIT_SCAN`])
/// and mails the owner of each agent whose refusals crossed the threshold.
pub(crate) async fn refused_auths(
    notifier: &Notifier,
    meta: &dyn MetadataStore,
    counter: &mut RefusedAuths,
    now: UnixTime,
) -> anyhow::Result<usize> {
    let mut crossed = Vec::new();
    let mut read = 0;
    while read < MAX_AUDIT_SCAN {
        let page = meta.audit_list(counter.after, AUDIT_PAGE).await?;
        if page.is_empty() {
            break;
        }
        read += u32::try_from(page.len()).unwrap_or(u32::MAX);
        crossed.extend(counter.count(&page, now - 3600));
    }
    if crossed.is_empty() {
        return Ok(0);
    }
    let names = agent_names(meta).await?;
    let mut sent = 0;
    let mut seen = HashSet::new();
    for (agent, hour) in crossed {
        let Some((owner, name)) = names.get(agent.as_str()) else { continue };
        if !seen.insert((agent.clone(), hour)) || !notifier.wants(owner, NoticeKind::RefusedAuth).await? {
            continue;
        }
        if !meta.mark_notice_sent(owner, &format!("refused-auth/{agent}/{hour}"), now).await? {
            continue;
        }
        let who = label(agent.as_str(), name.as_ref());
        let notice = Notice::new(
            NoticeKind::RefusedAuth,
            format!("Agent {who}: {REFUSED_AUTH_THRESHOLD} refused logins within an hour"),
            vec![
                format!(
                    "At least {REFUSED_AUTH_THRESHOLD} sending logins (SMTP or HTTP AUTH) of agent {who} were refused since {}.",
                    rfc3339(hour * 3600)
                ),
                "A revoked or expired key still in use, a missing grant, or someone trying its inboxes. The reasons are in the audit log: agentkeys audit list --agent ".to_owned()
                    + agent.as_str()
                    + ", or the console's audit page.",
            ],
        );
        match notifier.notify(owner, &notice, now).await {
            Ok(_) => sent += 1,
            Err(e) => tracing::warn!(error = %e, %owner, "a refused-AUTH notice was not sent"),
        }
    }
    Ok(sent)
}

/// The notices the send guardrails recorded (`owner_notices`: a send refused
/// by a limit, the bounce pause, a message held for review), mailed once each
/// under the kind the owner's settings name (`send_limit`, or `bounces` for
/// the pause). `cursors` keeps each owner's position; after a restart the
/// notices are read again from the start, and the once-only marks and
/// [`GUARD_NOTICE_MAX_AGE_SECS`] keep them from being mailed twice or late.
pub(crate) async fn guardrail_notices(
    notifier: &Notifier,
    meta: &dyn MetadataStore,
    cursors: &mut HashMap<OwnerId, i64>,
    now: UnixTime,
) -> anyhow::Result<usize> {
    let names = agent_names(meta).await?;
    let mut sent = 0;
    for owner in meta.list_owners().await? {
        let after = cursors.get(&owner.id).copied().unwrap_or(0);
        for (position, n) in meta.owner_notices(&owner.id, after, GUARD_NOTICE_PAGE).await? {
            if sent >= MAX_NOTICES_PER_SWEEP {
                return Ok(sent);
            }
            cursors.insert(owner.id.clone(), position);
            if n.at < now - GUARD_NOTICE_MAX_AGE_SECS {
                continue;
            }
            let Some(notice) = guardrail_notice(&n, names.get(n.agent.as_str()).and_then(|(_, name)| name.as_ref())) else {
                continue;
            };
            if !notice.kind.is_some_and(|k| k == NoticeKind::Bounces || k == NoticeKind::SendLimit)
                || !notifier.wants(&owner.id, notice.kind.unwrap_or(NoticeKind::SendLimit)).await?
                || !meta.mark_notice_sent(&owner.id, &format!("guard/{}", n.key), now).await?
            {
                continue;
            }
            match notifier.notify(&owner.id, &notice, now).await {
                Ok(_) => sent += 1,
                Err(e) => tracing::warn!(error = %e, owner = %owner.id, "a send-limit notice was not sent"),
            }
        }
    }
    Ok(sent)
}

/// The mail for one guardrail notice; `None` for a kind this server does not mail.
fn guardrail_notice(n: &agentkeys_store::OwnerNotice, name: Option<&String>) -> Option<Notice> {
    let detail: serde_json::Value = serde_json::from_str(&n.detail).unwrap_or_default();
    let text = |key: &str| detail[key].as_str().map(str::to_owned).unwrap_or_else(|| "-".to_owned());
    let agent = label(n.agent.as_str(), name);
    let inbox = text("inbox");
    match n.kind.as_str() {
        "send.limited" if detail["limit"] == "bounce-rate" => Some(Notice::new(
            NoticeKind::Bounces,
            format!("Agent {agent}'s sending is paused: too many bounces"),
            vec![
                format!("Mail from {inbox} bounced at more than {}% over the last 24 hours, so its sends are refused until the rate falls.", detail["max"]),
                format!("See what bounced with agentkeys queue list, and change the limit with agentkeys agent limits {}.", n.agent),
            ],
        )),
        "send.limited" => Some(Notice::new(
            NoticeKind::SendLimit,
            format!("Agent {agent} reached its send limit ({})", text("limit")),
            vec![
                format!(
                    "A message from {inbox} was refused: the {} limit of {} is reached. The agent may send again in {} s.",
                    text("limit"),
                    detail["max"],
                    detail["retry_after_secs"]
                ),
                format!("Change the limits with agentkeys agent limits {}.", n.agent),
            ],
        )),
        "message.held" => Some(Notice::new(
            NoticeKind::SendLimit,
            format!("A message from agent {agent} is held for your review"),
            vec![
                format!("{inbox} sent a message to {} recipient(s); it waits for your decision.", detail["recipients"]),
                format!("Review it with agentkeys review show {}, then approve or reject it.", text("id")),
            ],
        )),
        _ => None,
    }
}

/// Per agent, (bounced, finished) deliveries of `entries` queued at or after
/// `since` (a delivery is one recipient of one message; `delivered` and
/// `bounced` are finished), for the agents `agent_of` names by sending inbox;
/// only the agents at or over [`DEFAULT_BOUNCE_NOTICE_PERCENT`] with at least
/// [`BOUNCE_RATE_MIN_FINISHED`] finished, ordered by agent.
pub(crate) fn bouncing_agents(
    entries: &[agentkeys_store::QueueEntry],
    agent_of: &HashMap<String, AgentId>,
    since: UnixTime,
) -> Vec<(AgentId, u32, u32)> {
    let mut counts: std::collections::BTreeMap<AgentId, (u32, u32)> = std::collections::BTreeMap::new();
    for e in entries.iter().filter(|e| e.queued_at >= since) {
        let Some(agent) = agent_of.get(e.sender.as_str()) else { continue };
        let (bounced, finished) = counts.entry(agent.clone()).or_default();
        match e.state.as_str() {
            "bounced" => {
                *bounced += 1;
                *finished += 1;
            }
            "delivered" => *finished += 1,
            _ => {}
        }
    }
    counts
        .into_iter()
        .filter(|(_, (bounced, finished))| {
            *finished >= BOUNCE_RATE_MIN_FINISHED
                && u64::from(*bounced) * 100 >= u64::from(DEFAULT_BOUNCE_NOTICE_PERCENT) * u64::from(*finished)
        })
        .map(|(agent, (bounced, finished))| (agent, bounced, finished))
        .collect()
}

/// Mails each owner whose agent bounces at [`DEFAULT_BOUNCE_NOTICE_PERCENT`]
/// or more over the last day, once per agent and UTC day.
pub(crate) async fn bounce_rates(notifier: &Notifier, meta: &dyn MetadataStore, now: UnixTime) -> anyhow::Result<usize> {
    let names = agent_names(meta).await?;
    let mut sent = 0;
    for owner in meta.list_owners().await? {
        if sent >= MAX_NOTICES_PER_SWEEP {
            break;
        }
        let rows = meta.sent_by_owner(&owner.id, None, BOUNCE_SCAN).await?;
        if rows.is_empty() || !notifier.wants(&owner.id, NoticeKind::Bounces).await? {
            continue;
        }
        let agent_of: HashMap<String, AgentId> =
            meta.list_inboxes(Some(&owner.id)).await?.into_iter().map(|i| (i.address.to_string(), i.agent)).collect();
        for (agent, bounced, finished) in bouncing_agents(&rows, &agent_of, now - DAY_SECS) {
            let day = now.div_euclid(DAY_SECS);
            if !meta.mark_notice_sent(&owner.id, &format!("bounce-rate/{agent}/{day}"), now).await? {
                continue;
            }
            let who = label(agent.as_str(), names.get(agent.as_str()).and_then(|(_, n)| n.as_ref()));
            let percent = u64::from(bounced) * 100 / u64::from(finished.max(1));
            let notice = Notice::new(
                NoticeKind::Bounces,
                format!("Agent {who}: {percent}% of its mail bounced today"),
                vec![
                    format!("{bounced} of the last {finished} finished deliveries of agent {who}'s mail in the last 24 hours bounced (the notice threshold is {DEFAULT_BOUNCE_NOTICE_PERCENT}%)."),
                    "Mail to addresses that do not exist hurts the reputation of your domain with every receiver. See what bounced with agentkeys queue list or the console's sent view.".to_owned(),
                    format!("To pause the agent's sending automatically at a bounce rate you choose: agentkeys agent limits {agent} --max-bounce-percent N."),
                ],
            );
            match notifier.notify(&owner.id, &notice, now).await {
                Ok(_) => sent += 1,
                Err(e) => tracing::warn!(error = %e, owner = %owner.id, "a bounce notice was not sent"),
            }
        }
    }
    Ok(sent)
}

/// Verifies the whole chain; on a break, every owner is told once per broken record.
pub(crate) async fn audit_chain(notifier: &Notifier, meta: &dyn MetadataStore) -> anyhow::Result<usize> {
    let Err((broken, verified)) = crate::audit::verify(meta, &std::collections::BTreeSet::new()).await? else {
        return Ok(0);
    };
    tracing::error!(%broken, "the audit chain failed verification");
    let now = crate::now();
    let mut sent = 0;
    for owner in meta.list_owners().await? {
        if sent >= MAX_NOTICES_PER_SWEEP || !notifier.wants(&owner.id, NoticeKind::Audit).await? {
            continue;
        }
        if !meta.mark_notice_sent(&owner.id, &format!("audit-broken/{}", broken.seq), now).await? {
            continue;
        }
        let notice = Notice::new(
            NoticeKind::Audit,
            "The audit log failed verification",
            vec![
                format!("Audit record {} does not verify: {}. The {verified} records before it do.", broken.seq, broken.reason),
                "Records may have been edited or removed. Ask the operator to run agentkeys audit verify on the server and compare with an exported checkpoint (agentkeys audit verify --against).".to_owned(),
            ],
        );
        match notifier.notify(&owner.id, &notice, now).await {
            Ok(_) => sent += 1,
            Err(e) => tracing::warn!(error = %e, owner = %owner.id, "an audit notice was not sent"),
        }
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use agentkeys_audit::{AuditEvent, ChainHead, SealedRecord};
    use proptest::prelude::*;

    fn agent(n: u8) -> AgentId {
        format!("0x{n:040x}").parse().unwrap()
    }

    fn records(events: &[(u8, bool, i64)]) -> Vec<agentkeys_audit::AuditRecord> {
        let mut head = ChainHead::GENESIS;
        let mut out = Vec::new();
        for (a, denied, ts) in events {
            let mut e = AuditEvent::ok(Actor::Agent(agent(*a)), OP_SUBMISSION_AUTH, "bot@x.test");
            if *denied {
                e.outcome = Outcome::Denied;
            }
            let r = SealedRecord::seal(&head, *ts, &e).unwrap().record().clone();
            head = r.head();
            out.push(r);
        }
        out
    }

    fn entry(sender: &str, state: &str, queued_at: i64) -> agentkeys_store::QueueEntry {
        agentkeys_store::QueueEntry {
            message_id: "01BOUNCE".to_owned(),
            sender: sender.parse().unwrap(),
            recipient: "r@remote.test".to_owned(),
            state: state.to_owned(),
            size: 1,
            queued_at,
            next_attempt_at: queued_at,
            attempts: 1,
            last_response: None,
        }
    }

    #[test]
    fn the_default_bounce_threshold_is_named_and_needs_a_sample() {
        assert_eq!((DEFAULT_BOUNCE_NOTICE_PERCENT, BOUNCE_RATE_MIN_FINISHED), (10, 10));
        let agent_of: HashMap<String, AgentId> = [("a@x.test".to_owned(), agent(1))].into();
        // 1 of 10: exactly the threshold.
        let mut rows: Vec<_> = (0..9).map(|_| entry("a@x.test", "delivered", 100)).collect();
        rows.push(entry("a@x.test", "bounced", 100));
        assert_eq!(bouncing_agents(&rows, &agent_of, 0), vec![(agent(1), 1, 10)]);
        // 9 bounces of 9 finished: too few to judge; queued or deferred rows are not finished.
        let few: Vec<_> = (0..9).map(|_| entry("a@x.test", "bounced", 100)).chain([entry("a@x.test", "deferred", 100)]).collect();
        assert_eq!(bouncing_agents(&few, &agent_of, 0), vec![]);
        // Older than the window, or from an inbox of no known agent: not counted.
        assert_eq!(bouncing_agents(&rows, &agent_of, 101), vec![]);
        let other: Vec<_> = rows.iter().map(|r| entry("b@x.test", &r.state, 100)).collect();
        assert_eq!(bouncing_agents(&other, &agent_of, 0), vec![]);
    }

    proptest! {
        /// An agent is reported exactly when it has enough finished deliveries
        /// in the window and the bounced share reaches the threshold.
        #[test]
        fn bouncing_agents_match_the_rule(rows in prop::collection::vec((0u8..3, 0u8..4, 0i64..200), 0..80), since in 0i64..200) {
            let states = ["delivered", "bounced", "queued", "deferred"];
            let agent_of: HashMap<String, AgentId> = (0u8..3).map(|a| (format!("a{a}@x.test"), agent(a))).collect();
            let entries: Vec<_> = rows.iter().map(|(a, s, t)| entry(&format!("a{a}@x.test"), states[usize::from(*s)], *t)).collect();
            let got = bouncing_agents(&entries, &agent_of, since);
            let mut want = Vec::new();
            for a in 0u8..3 {
                let mine = rows.iter().filter(|(x, _, t)| *x == a && *t >= since);
                let bounced = u32::try_from(mine.clone().filter(|(_, s, _)| *s == 1).count()).unwrap();
                let finished = u32::try_from(mine.filter(|(_, s, _)| *s <= 1).count()).unwrap();
                if finished >= BOUNCE_RATE_MIN_FINISHED && bounced * 100 >= DEFAULT_BOUNCE_NOTICE_PERCENT * finished {
                    want.push((agent(a), bounced, finished));
                }
            }
            prop_assert_eq!(got, want);
        }

        /// An (agent, hour) is reported exactly when its refusals in that hour
        /// reach the threshold, once, however the records are paged.
        #[test]
        fn the_threshold_is_crossed_once(events in prop::collection::vec((0u8..3, any::<bool>(), 7_200i64..14_400), 0..60), split in 0usize..60) {
            let rs = records(&events);
            let split = split.min(rs.len());
            let mut counter = RefusedAuths::default();
            let mut got = counter.count(&rs[..split], 0);
            got.extend(counter.count(&rs[split..], 0));
            let mut expected = HashMap::new();
            for (a, denied, ts) in &events {
                if *denied {
                    *expected.entry((agent(*a), ts.div_euclid(3600))).or_insert(0u32) += 1;
                }
            }
            let mut want: Vec<_> = expected.into_iter().filter(|(_, n)| *n >= REFUSED_AUTH_THRESHOLD).map(|(k, _)| k).collect();
            want.sort();
            got.sort();
            prop_assert_eq!(got, want);
            prop_assert_eq!(counter.after, rs.len() as u64);
        }
    }
}
