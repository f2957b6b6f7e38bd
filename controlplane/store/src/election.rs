//! Elections with a pre-vote round, started by this crate rather than by openraft's timer.
//!
//! openraft 0.9 starts an election, with a higher term, whenever its timer fires. A voter cut
//! off from the others keeps doing so, and when the partition heals its higher term reaches
//! the leader in an answer to append-entries: openraft adopts any higher vote, so the leader
//! steps down, although the returning node's log is behind and it cannot win. Writes stall for
//! a needless election.
//!
//! Here openraft's timer is off for clustered stores. A voter that has not heard from a leader
//! for [`LEASE`] plus a random part of [`SPREAD`] first asks the other voters whether they
//! would vote for it ([`Local::pre_vote`]). A voter grants this only if it has not heard from a
//! leader within [`LEASE`] itself, does not lead, and holds no log the candidate lacks. Only
//! with a quorum of grants (its own included) does the node start a real election. A node cut
//! off from the others never gets one, so its term stays where it was and its return disturbs
//! nobody. Two voters that ask at once would split the election they both start, so a voter
//! with its own round in flight grants only a candidate with a longer log (or the same and a
//! higher id), and a voter that granted stands back from campaigning for a lease.
//!
//! The lease is also how long a dead leader goes unnoticed. It is openraft's leader lease
//! (`election_timeout_max`, see `raft_config`): until it has passed, a voter refuses real votes
//! anyway.
//!
//! A leader that is stopping need not leave the others to notice ([`Store::hand_over`]): it
//! holds new writes, waits for the voter furthest along to have its whole log, and tells that
//! voter to campaign at once ([`Local::campaign_now`]). openraft's lease check covers only
//! followers that heard from a leader lately; the leader's own vote was last changed when it
//! was elected, so it grants the vote and steps down, and with three voters its grant and the
//! candidate's own make a quorum. With more, the others still refuse for a lease, and the
//! election is decided as it would be after a crash, only sooner.
//!
//! [`Store::hand_over`]: crate::Store::hand_over

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::storage::RaftLogStorage as _;
use openraft::{LogId, Raft, ServerState};
use rand::Rng as _;

use crate::forward::{Answer, Forwarded, Local};
use crate::raft_types::{NodeId, TypeConfig};
use crate::transport::client::NetworkFactory;

/// How long after last hearing from a leader a voter takes it for gone (openraft's leader
/// lease in a clustered store: `election_timeout_max`).
pub(crate) const LEASE: Duration = Duration::from_millis(1000);
/// The random part added to [`LEASE`] before a voter asks for pre-votes, so that voters who
/// lost the same leader rarely ask at once.
const SPREAD: Duration = Duration::from_millis(300);
/// How long a pre-vote round waits for the answers.
const ROUND_TIMEOUT: Duration = Duration::from_millis(400);
/// How often the driver looks at the clock.
const TICK: Duration = Duration::from_millis(50);
/// The longest a leader holds writes while it hands over (they then go to the new leader).
pub(crate) const HANDOVER: Duration = Duration::from_millis(1500);

/// Whether this leader is handing over: new writes wait until it is done, then find the new
/// leader as any write to a former leader does.
#[derive(Clone, Debug)]
pub(crate) struct Handover(tokio::sync::watch::Sender<bool>);

impl Handover {
    pub(crate) fn new() -> Self {
        Self(tokio::sync::watch::channel(false).0)
    }

    /// Holds writes until the returned guard is dropped.
    pub(crate) fn begin(&self) -> HandoverGuard<'_> {
        self.0.send_replace(true);
        HandoverGuard(self)
    }

    /// Returns at once unless a handover is under way; then when it ends (at most
    /// [`HANDOVER`]).
    pub(crate) async fn wait_out(&self) {
        if !*self.0.borrow() {
            return;
        }
        let mut rx = self.0.subscribe();
        let _ = tokio::time::timeout(HANDOVER, rx.wait_for(|on| !*on)).await;
    }
}

pub(crate) struct HandoverGuard<'a>(&'a Handover);

impl Drop for HandoverGuard<'_> {
    fn drop(&mut self) {
        self.0.0.send_replace(false);
    }
}

/// What this node's elections go by: when it last heard from a leader it accepted
/// (append-entries or a snapshot), its own pre-vote round in flight, and how long it stands
/// back after granting another's.
#[derive(Clone, Debug)]
pub(crate) struct LeaderContact(Arc<Mutex<Contact>>);

#[derive(Debug)]
struct Contact {
    heard: Instant,
    /// The last log id this node campaigns with, while its pre-vote round is in flight.
    campaigning: Option<Option<LogId<NodeId>>>,
    /// Having granted another voter's pre-vote, this node does not campaign before this.
    stand_back_until: Option<Instant>,
    /// When this node was seen to lead (a little after it was elected), while it does.
    led_since: Option<Instant>,
}

impl LeaderContact {
    /// Counted from now: a node that just started waits a lease before it asks for votes.
    pub(crate) fn new() -> Self {
        Self(Arc::new(Mutex::new(Contact {
            heard: Instant::now(),
            campaigning: None,
            stand_back_until: None,
            led_since: None,
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Contact> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn heard(&self) {
        self.lock().heard = Instant::now();
    }

    pub(crate) fn elapsed(&self) -> Duration {
        self.lock().heard.elapsed()
    }

    /// How long this node has led, as the election driver saw it (up to a tick late).
    pub(crate) fn led_for(&self) -> Option<Duration> {
        self.lock().led_since.map(|t| t.elapsed())
    }

    /// When a vote for a handover is granted by this leader: once its own vote is a lease old
    /// (openraft refuses votes within the lease of the last vote change, the leader's own
    /// election included).
    pub(crate) fn grants_handover_at(&self) -> Option<Instant> {
        self.lock().led_since.map(|t| t + LEASE + TICK)
    }
}

/// What a voter answers a pre-vote: granted, or why not.
pub(crate) type PreVoteAnswer = Result<(), String>;

impl Local {
    /// Whether this node would vote for `candidate`, whose last log entry is `candidate_last`,
    /// now. Granting changes no raft state; this node only stands back from campaigning for
    /// a lease, so that the candidate's election is not split by its own.
    pub(crate) async fn pre_vote(
        &self,
        candidate: NodeId,
        candidate_last: Option<LogId<NodeId>>,
    ) -> PreVoteAnswer {
        let (me, state, leader) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.id, m.state, m.current_leader)
        };
        if state == ServerState::Leader {
            return Err("it leads".into());
        }
        let heard = self.leader_contact.elapsed();
        if heard < LEASE {
            return Err(format!(
                "it heard from its leader {leader:?} {} ms ago",
                heard.as_millis()
            ));
        }
        let mine = self
            .log
            .clone()
            .get_log_state()
            .await
            .map_err(|e| format!("it cannot read its log: {e}"))?
            .last_log_id;
        if candidate_last < mine {
            return Err(format!(
                "its log reaches {mine:?}, the candidate's only {candidate_last:?}"
            ));
        }
        let mut contact = self.leader_contact.lock();
        // Two voters asking at once would both be granted and split the election: the one
        // with the longer log (then the higher id) goes first.
        if let Some(own) = contact.campaigning
            && (candidate_last, candidate) < (own, me)
        {
            return Err("it is asking for votes itself, and goes first".into());
        }
        contact.stand_back_until = Some(Instant::now() + LEASE);
        Ok(())
    }
}

impl Local {
    /// Starts an election at once, skipping the pre-vote round, because the leader `from`
    /// asked this voter to take over from it. Refused unless `from` is the leader this node
    /// follows.
    pub(crate) async fn campaign_now(&self, from: NodeId) -> PreVoteAnswer {
        let (me, state, leader, voter) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let voter = m
                .membership_config
                .membership()
                .voter_ids()
                .any(|id| id == m.id);
            (m.id, m.state, m.current_leader, voter)
        };
        if !voter || state != ServerState::Follower || leader != Some(from) {
            return Err(format!(
                "node {me} is a {state:?}{} following {leader:?}, not a voter following node {from}",
                if voter { "" } else { " (not a voter)" }
            ));
        }
        tracing::info!(from, "the leader hands over: campaigning now");
        self.raft
            .trigger()
            .elect()
            .await
            .map_err(|e| format!("cannot start an election: {e}"))
    }
}

/// Runs until raft stops: starts an election, after a pre-vote round a quorum granted,
/// whenever this voter has not heard from a leader for a lease and a random part.
pub(crate) fn spawn(
    raft: Raft<TypeConfig>,
    local: Arc<Local>,
    network: NetworkFactory,
    me: NodeId,
) {
    tokio::spawn(async move {
        let mut wait = LEASE + rand::thread_rng().gen_range(Duration::ZERO..SPREAD);
        // When this node last asked: it asks again only after another full wait.
        let mut asked: Option<Instant> = None;
        let mut was_leader = false;
        loop {
            tokio::time::sleep(TICK).await;
            let (state, term, voters, running) = {
                let m = raft.metrics();
                let m = m.borrow();
                let voters: Vec<(NodeId, String)> = m
                    .membership_config
                    .membership()
                    .voter_ids()
                    .map(|id| {
                        let addr = m
                            .membership_config
                            .membership()
                            .get_node(&id)
                            .map(|n| n.addr.clone())
                            .unwrap_or_default();
                        (id, addr)
                    })
                    .collect();
                (m.state, m.current_term, voters, m.running_state.is_ok())
            };
            if !running {
                return;
            }
            let leads = state == ServerState::Leader;
            if leads && !was_leader {
                tracing::info!(term, "this node leads the store");
                local.leader_contact.lock().led_since = Some(Instant::now());
            } else if !leads && was_leader {
                local.leader_contact.lock().led_since = None;
            }
            was_leader = leads;
            if state == ServerState::Leader || !voters.iter().any(|(id, _)| *id == me) {
                continue;
            }
            let silent = local.leader_contact.elapsed();
            let standing_back = local
                .leader_contact
                .lock()
                .stand_back_until
                .is_some_and(|t| Instant::now() < t);
            if silent < wait || asked.is_some_and(|t| t.elapsed() < wait) || standing_back {
                continue;
            }
            asked = Some(Instant::now());
            wait = LEASE + rand::thread_rng().gen_range(Duration::ZERO..SPREAD);
            let last = match local.log.clone().get_log_state().await {
                Ok(s) => s.last_log_id,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the log for a pre-vote");
                    continue;
                }
            };
            local.leader_contact.lock().campaigning = Some(last);
            let granted = round(&network, me, last, &voters).await;
            local.leader_contact.lock().campaigning = None;
            let quorum = voters.len() / 2 + 1;
            if granted >= quorum {
                tracing::info!(
                    granted,
                    voters = voters.len(),
                    silent_ms = silent.as_millis() as u64,
                    "no leader heard from; pre-vote granted, starting an election"
                );
                if raft.trigger().elect().await.is_err() {
                    return;
                }
            } else {
                tracing::debug!(granted, quorum, "pre-vote not granted; no election");
            }
        }
    });
}

/// One pre-vote round among `voters` for this node, whose log ends at `last`: how many grant
/// it, this node included.
async fn round(
    network: &NetworkFactory,
    me: NodeId,
    last: Option<LogId<NodeId>>,
    voters: &[(NodeId, String)],
) -> usize {
    let request = Forwarded::PreVote {
        candidate: me,
        last_log_id: last,
    };
    let Ok(body) = postcard::to_allocvec(&request) else {
        return 0;
    };
    let asks = voters.iter().filter(|(id, _)| *id != me).map(|(id, addr)| {
        let body = body.clone();
        async move {
            match network.forward(*id, addr, body, ROUND_TIMEOUT).await {
                Ok(Answer::PreVote(Ok(()))) => true,
                Ok(Answer::PreVote(Err(why))) => {
                    tracing::debug!(peer = id, why, "pre-vote refused");
                    false
                }
                Ok(other) => {
                    tracing::debug!(peer = id, answer = ?other, "pre-vote answered oddly");
                    false
                }
                Err(e) => {
                    tracing::debug!(peer = id, error = %e, "pre-vote unanswered");
                    false
                }
            }
        }
    });
    1 + futures::future::join_all(asks)
        .await
        .into_iter()
        .filter(|granted| *granted)
        .count()
}
