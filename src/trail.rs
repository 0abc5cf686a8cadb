//! The audit trail's tamper evidence: every line carries its chain's id, a
//! sequence number and the SHA-256 of the line before it; every N lines or T
//! seconds a digest line signed with Ed25519 commits to everything before it;
//! `marks` lines record the revision each credential has reached, so an offline
//! check finds a record put back behind the vault's back. Also the verifier that
//! an auditor runs with the public keys alone (`credvault audit verify`).
//!
//! A line is a JSON object whose last fields are `"chain"`, `"seq"` and
//! `"prev"`; a digest's very last field is `"signature"`, over the bytes of its
//! line without that field. The signing key is derived from a master key (HKDF
//! style, a labelled HMAC subkey), so it is never stored anywhere; its public
//! key is printed by `credvault audit public-key` and answered by ListAuditEvents.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use base64::{engine::general_purpose::STANDARD as B64, Engine};
use ed25519_dalek::{Signer as _, Verifier as _};
use sha2::{Digest, Sha256};

use crate::crypto::MasterKey;

/// The `prev` of a chain's first line.
pub const GENESIS: [u8; 32] = [0; 32];
/// Credentials named in one `marks` line at most.
pub const MARKS_PER_LINE: usize = 1000;
/// The default: a digest after this many lines of a chain.
pub const DEFAULT_DIGEST_EVENTS: u64 = 1000;
/// The default: a digest this long after the first line it has not covered.
pub const DEFAULT_DIGEST_INTERVAL: Duration = Duration::from_secs(5);

const SIGNING_LABEL: &[u8] = b"credvault audit signing key v1";

/// The key that signs digests: derived from one master key, zeroized on drop.
pub struct Signer {
    id: String,
    key: ed25519_dalek::SigningKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// The signing key of master key `master` (named by its id).
    pub fn derive(master: &MasterKey) -> Self {
        let seed = master.derive_subkey(SIGNING_LABEL);
        Signer {
            id: master.id().to_owned(),
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        }
    }

    /// The public half, for auditors.
    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            id: self.id.clone(),
            key: self.key.verifying_key(),
        }
    }

    fn sign(&self, bytes: &[u8]) -> String {
        B64.encode(self.key.sign(bytes).to_bytes())
    }
}

/// A digest-verifying key and the master key id it belongs to. Its text form,
/// one per line of a public-key file, is `<id> <base64 of 32 bytes>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    /// The id of the master key the signing key was derived from.
    pub id: String,
    key: ed25519_dalek::VerifyingKey,
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.id, B64.encode(self.key.as_bytes()))
    }
}

impl PublicKey {
    /// The key's 32 bytes, base64.
    pub fn base64(&self) -> String {
        B64.encode(self.key.as_bytes())
    }

    /// Parses every `<id> <base64>` line of `text` (blank lines and `#` comments skipped).
    pub fn parse_all(text: &str) -> Result<Vec<PublicKey>, String> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (id, key) = line.split_once(char::is_whitespace).ok_or_else(|| {
                format!("line {}: expected `<key id> <base64 public key>`", n + 1)
            })?;
            let bytes = B64
                .decode(key.trim())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| {
                    format!("line {}: the public key is not 32 bytes of base64", n + 1)
                })?;
            let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
                .map_err(|_| format!("line {}: not an Ed25519 public key", n + 1))?;
            keys.push(PublicKey {
                id: id.to_owned(),
                key,
            });
        }
        if keys.is_empty() {
            return Err("no public key given".into());
        }
        Ok(keys)
    }
}

/// One chain's head: the next line's place in it.
#[derive(Clone, Debug)]
pub struct Chain {
    id: String,
    seq: u64,
    head: [u8; 32],
    /// Lines since the last digest, and when the first of them was linked.
    since_digest: u64,
    uncovered_since: Option<Instant>,
}

/// A line linked into a chain, not yet committed (see [`Chain::commit`]).
#[derive(Clone, Debug)]
pub struct Link {
    /// The whole line, chain fields (and signature) included.
    pub line: String,
    /// Its sequence number.
    pub seq: u64,
    hash: [u8; 32],
    digest: bool,
}

impl Link {
    /// Whether the line is a signed digest.
    pub fn is_digest(&self) -> bool {
        self.digest
    }
}

/// Why a digest is written: shown in it, for the auditor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DigestReason {
    /// The device opened (the server started).
    Start,
    /// N lines or T seconds since the last one.
    Interval,
    /// The last line of a file about to be rotated away.
    Rotate,
    /// The first line of a new file (rotated or reopened): a signed checkpoint.
    Checkpoint,
    /// Old events were pruned: a signed checkpoint after them.
    Prune,
    /// The server is stopping: nothing follows in this chain.
    Stop,
}

impl DigestReason {
    fn as_str(self) -> &'static str {
        match self {
            DigestReason::Start => "start",
            DigestReason::Interval => "interval",
            DigestReason::Rotate => "rotate",
            DigestReason::Checkpoint => "checkpoint",
            DigestReason::Prune => "prune",
            DigestReason::Stop => "stop",
        }
    }
}

/// How often digests are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DigestPolicy {
    /// After this many lines.
    pub events: u64,
    /// This long after the first line not yet covered.
    pub interval: Duration,
}

impl Default for DigestPolicy {
    fn default() -> Self {
        DigestPolicy {
            events: DEFAULT_DIGEST_EVENTS,
            interval: DEFAULT_DIGEST_INTERVAL,
        }
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The chain fields of a line: `,"chain":…,"seq":…,"prev":…` closing `body`.
fn with_chain(body: &str, chain: &str, seq: u64, prev: &[u8; 32]) -> String {
    use std::fmt::Write as _;
    let open = body.strip_suffix('}').unwrap_or(body);
    let mut line = String::with_capacity(open.len() + chain.len() + 120);
    line.push_str(open);
    if !open.ends_with('{') {
        line.push(',');
    }
    let mut hex = [0u8; 64];
    // 32 bytes always fit 64 hex digits.
    let hex = hex::encode_to_slice(prev, &mut hex)
        .ok()
        .and_then(|()| std::str::from_utf8(&hex).ok())
        .unwrap_or_default();
    let _ = write!(
        line,
        "\"chain\":\"{chain}\",\"seq\":{seq},\"prev\":\"{hex}\"}}"
    );
    line
}

impl Chain {
    /// A new chain with a random id.
    pub fn new() -> Self {
        Chain::resume(uuid::Uuid::now_v7().simple().to_string(), 0, GENESIS)
    }

    /// Goes on after line `seq` of chain `id`, whose hash is `head`.
    pub fn resume(id: String, seq: u64, head: [u8; 32]) -> Self {
        Chain {
            id,
            seq,
            head,
            since_digest: 0,
            uncovered_since: None,
        }
    }

    /// Goes on after `line`, the last of a trail, when it is a chained line.
    pub fn after_line(line: &str) -> Option<Self> {
        let parsed = parse_line(line)?;
        Some(Chain::resume(
            parsed.chain,
            parsed.seq,
            sha256(line.as_bytes()),
        ))
    }

    /// The chain's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The last committed line's sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// `body` (a JSON object) as the chain's next line.
    pub fn link(&self, body: &str) -> Link {
        self.link_after(self.seq, &self.head, body)
    }

    /// `body` as the line after `after` (a link not yet committed), for a group.
    pub fn link_next(&self, after: &Link, body: &str) -> Link {
        self.link_after(after.seq, &after.hash, body)
    }

    fn link_after(&self, seq: u64, head: &[u8; 32], body: &str) -> Link {
        let line = with_chain(body, &self.id, seq + 1, head);
        Link {
            hash: sha256(line.as_bytes()),
            line,
            seq: seq + 1,
            digest: false,
        }
    }

    /// A signed digest after the last committed line.
    pub fn digest(&self, signer: &Signer, reason: DigestReason, policy: DigestPolicy) -> Link {
        self.digest_after(self.seq, &self.head, signer, reason, policy)
    }

    /// A signed digest as the line after `after`.
    pub fn digest_next(
        &self,
        after: &Link,
        signer: &Signer,
        reason: DigestReason,
        policy: DigestPolicy,
    ) -> Link {
        self.digest_after(after.seq, &after.hash, signer, reason, policy)
    }

    fn digest_after(
        &self,
        seq: u64,
        head: &[u8; 32],
        signer: &Signer,
        reason: DigestReason,
        policy: DigestPolicy,
    ) -> Link {
        let body = format!(
            "{{\"kind\":\"digest\",\"time\":\"{}\",\"reason\":\"{}\",\"key\":\"{}\",\"every_events\":{},\"every_ms\":{}}}",
            humantime::format_rfc3339_micros(SystemTime::now()),
            reason.as_str(),
            signer.id,
            policy.events,
            policy.interval.as_millis(),
        );
        let unsigned = with_chain(&body, &self.id, seq + 1, head);
        let signature = signer.sign(unsigned.as_bytes());
        let line = format!(
            "{},\"signature\":\"{signature}\"}}",
            unsigned.strip_suffix('}').unwrap_or(&unsigned)
        );
        Link {
            hash: sha256(line.as_bytes()),
            line,
            seq: seq + 1,
            digest: true,
        }
    }

    /// The line is written: the next one follows it.
    pub fn commit(&mut self, link: &Link) {
        self.seq = link.seq;
        self.head = link.hash;
        if link.digest {
            self.since_digest = 0;
            self.uncovered_since = None;
        } else {
            self.since_digest += 1;
            self.uncovered_since.get_or_insert_with(Instant::now);
        }
    }

    /// Whether a digest is due now under `policy`.
    pub fn digest_due(&self, policy: DigestPolicy) -> bool {
        self.since_digest >= policy.events.max(1)
            || self
                .uncovered_since
                .is_some_and(|t| t.elapsed() >= policy.interval)
    }

    /// How long until a digest is due by time (`None`: every line is covered).
    pub fn digest_in(&self, policy: DigestPolicy) -> Option<Duration> {
        self.uncovered_since
            .map(|t| policy.interval.saturating_sub(t.elapsed()))
    }

    /// Lines written since the last digest.
    pub fn lines_since_digest(&self) -> u64 {
        self.since_digest
    }

    /// Whether lines were written since the last digest.
    pub fn uncovered(&self) -> bool {
        self.since_digest > 0
    }
}

impl Default for Chain {
    fn default() -> Self {
        Chain::new()
    }
}

/// The body of a `marks` line naming `marks` (credential id → revision).
pub fn marks_body(marks: &[(String, u64)], full: bool) -> String {
    let map: BTreeMap<&str, u64> = marks.iter().map(|(id, rev)| (id.as_str(), *rev)).collect();
    format!(
        "{{\"kind\":\"marks\",\"time\":\"{}\",\"full\":{full},\"marks\":{}}}",
        humantime::format_rfc3339_micros(SystemTime::now()),
        serde_json::to_string(&map).unwrap_or_else(|_| "{}".into()),
    )
}

/// The highest revision this server has seen of each credential, each with the
/// generation of its last change, so that every device of the audit trail
/// records what changed since its own last digest.
#[derive(Debug, Default)]
pub struct Marks {
    inner: Mutex<MarksInner>,
}

#[derive(Debug, Default)]
struct MarksInner {
    /// Credential id → (revision, generation of the change).
    seen: HashMap<String, (u64, u64)>,
    generation: u64,
}

impl Marks {
    fn lock(&self) -> std::sync::MutexGuard<'_, MarksInner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Notes `revision` of `id` unless a higher one was seen: `Err(seen)` then.
    pub fn check(&self, id: &str, revision: u64) -> Result<(), u64> {
        let mut inner = self.lock();
        match inner.seen.get(id) {
            Some(&(seen, _)) if revision < seen => Err(seen),
            Some(&(seen, _)) if revision == seen => Ok(()),
            _ => {
                inner.generation += 1;
                let generation = inner.generation;
                inner.seen.insert(id.to_owned(), (revision, generation));
                Ok(())
            }
        }
    }

    /// Notes that `id` is at `revision` (at least; exactly, with `reset`).
    pub fn note(&self, id: &str, revision: u64, reset: bool) {
        let mut inner = self.lock();
        inner.generation += 1;
        let generation = inner.generation;
        let entry = inner.seen.entry(id.to_owned()).or_insert((revision, 0));
        if reset || entry.0 < revision {
            entry.0 = revision;
        }
        entry.1 = generation;
    }

    /// The marks changed after generation `after` (every mark for 0), sorted by
    /// id, and the generation to ask after next time.
    pub fn changed_since(&self, after: u64) -> (Vec<(String, u64)>, u64) {
        let inner = self.lock();
        let mut out: Vec<_> = inner
            .seen
            .iter()
            .filter(|(_, &(_, generation))| generation > after)
            .map(|(id, &(revision, _))| (id.clone(), revision))
            .collect();
        out.sort_unstable();
        (out, inner.generation)
    }

    /// Every mark, sorted by id.
    pub fn all(&self) -> Vec<(String, u64)> {
        self.changed_since(0).0
    }
}

/// The `marks` lines (bodies) that record `marks`, [`MARKS_PER_LINE`] a line.
pub fn marks_bodies(marks: &[(String, u64)], full: bool) -> Vec<String> {
    if marks.is_empty() && full {
        return vec![marks_body(&[], true)];
    }
    marks
        .chunks(MARKS_PER_LINE)
        .map(|chunk| marks_body(chunk, full))
        .collect()
}

/// The chain fields (and kind) of a line, when it has them.
#[derive(Debug)]
struct Parsed {
    chain: String,
    seq: u64,
    prev: [u8; 32],
    kind: Kind,
    time: Option<SystemTime>,
}

#[derive(Debug)]
enum Kind {
    Event,
    Digest {
        key: String,
        reason: String,
        policy: DigestPolicy,
        /// Whether the signature verifies (`None`: no key of that id was given).
        signature: Option<bool>,
    },
    Marks(Vec<(String, u64)>),
}

#[derive(serde::Deserialize)]
struct Fields {
    #[serde(default)]
    chain: Option<String>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    prev: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    time: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    every_events: Option<u64>,
    #[serde(default)]
    every_ms: Option<u64>,
    #[serde(default)]
    signature: Option<String>,
    #[serde(default)]
    marks: Option<BTreeMap<String, u64>>,
}

fn parse_line(line: &str) -> Option<Parsed> {
    parse_with(line, &HashMap::new())
}

fn parse_with(line: &str, keys: &HashMap<String, PublicKey>) -> Option<Parsed> {
    let fields: Fields = serde_json::from_str(line).ok()?;
    let prev = <[u8; 32]>::try_from(hex::decode(fields.prev?).ok()?).ok()?;
    let time = fields
        .time
        .as_deref()
        .and_then(|t| humantime::parse_rfc3339(t).ok());
    let kind = match fields.kind.as_deref() {
        Some("digest") => {
            let key = fields.key.unwrap_or_default();
            let signature = keys.get(&key).map(|public| {
                let Some(sig) = fields.signature.as_deref() else {
                    return false;
                };
                let Some(unsigned) = line
                    .strip_suffix(&format!(",\"signature\":\"{sig}\"}}"))
                    .map(|s| format!("{s}}}"))
                else {
                    return false;
                };
                let Some(sig) = B64
                    .decode(sig)
                    .ok()
                    .and_then(|b| <[u8; 64]>::try_from(b).ok())
                else {
                    return false;
                };
                public
                    .key
                    .verify(
                        unsigned.as_bytes(),
                        &ed25519_dalek::Signature::from_bytes(&sig),
                    )
                    .is_ok()
            });
            Kind::Digest {
                key,
                reason: fields.reason.unwrap_or_default(),
                policy: DigestPolicy {
                    events: fields.every_events.unwrap_or(DEFAULT_DIGEST_EVENTS),
                    interval: Duration::from_millis(fields.every_ms.unwrap_or(5_000)),
                },
                signature,
            }
        }
        Some("marks") => Kind::Marks(fields.marks.unwrap_or_default().into_iter().collect()),
        _ => Kind::Event,
    };
    Some(Parsed {
        chain: fields.chain?,
        seq: fields.seq?,
        prev,
        kind,
        time,
    })
}

/// Whether a line is one of the trail's own (a digest or marks), not an event.
pub fn is_proof_line(line: &str) -> bool {
    line.starts_with("{\"kind\":\"digest\"") || line.starts_with("{\"kind\":\"marks\"")
}

/// What the verifier found wrong, where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where: a file and line, or a database row.
    pub place: String,
    /// What, in words.
    pub what: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.place, self.what)
    }
}

/// One chain as verified.
#[derive(Clone, Debug, Default)]
pub struct ChainReport {
    /// The chain's id.
    pub id: String,
    /// Its first and last sequence numbers seen.
    pub first_seq: u64,
    /// The last sequence number seen.
    pub last_seq: u64,
    /// Events (lines that are not digests or marks) seen.
    pub events: u64,
    /// Valid signed digests seen.
    pub digests: u64,
    /// The last line a valid digest covers, and where that digest is.
    pub signed_seq: u64,
    /// Where that digest is (file and line, or row).
    pub signed_place: String,
    /// Lines after the last valid digest (not covered by a signature).
    pub unsigned_tail: u64,
    /// Whether the chain ends with the server's closing digest.
    pub closed: bool,
    /// Whether the tail after the last digest is longer than its policy allows.
    pub overdue: bool,
}

/// What `credvault audit verify` reports.
#[derive(Debug, Default)]
pub struct Report {
    /// Every chain, in the order it first appeared.
    pub chains: Vec<ChainReport>,
    /// Everything found wrong, in the order found.
    pub problems: Vec<Problem>,
    /// Lines without chain fields (written before the trail was chained).
    pub unchained: u64,
    /// Lines seen.
    pub lines: u64,
    /// Each credential's highest revision a valid digest covers (id → (time, revision)).
    pub marks: HashMap<String, (SystemTime, u64)>,
}

impl Report {
    /// No problem found.
    pub fn intact(&self) -> bool {
        self.problems.is_empty()
    }
}

/// One chain's state while verifying.
struct Walk {
    report: ChainReport,
    expect_seq: u64,
    expect_prev: [u8; 32],
    /// The place of the line whose hash `expect_prev` is.
    prev_place: String,
    /// Whether the chain is anchored: it begins with its first line, or a valid
    /// digest signed it since the place it began here.
    anchored: Option<String>,
    first_place: String,
    /// Sequence numbers missing so far: (from, to, the place where the gap showed).
    missing: Vec<(u64, u64, String)>,
    /// Marks lines not yet covered by a digest.
    marks: Vec<(SystemTime, Vec<(String, u64)>)>,
    policy: DigestPolicy,
    last_digest_time: Option<SystemTime>,
    last_time: Option<SystemTime>,
}

/// Verifies a trail's lines, in the order they were stored, against `keys`.
pub fn verify<I>(lines: I, keys: &[PublicKey]) -> Report
where
    I: IntoIterator<Item = (String, String)>,
{
    let keys: HashMap<String, PublicKey> = keys.iter().map(|k| (k.id.clone(), k.clone())).collect();
    let mut report = Report::default();
    let mut walks: Vec<Walk> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut applied: Vec<(SystemTime, Vec<(String, u64)>)> = Vec::new();
    for (place, line) in lines {
        report.lines += 1;
        let Some(parsed) = parse_with(&line, &keys) else {
            if walks.is_empty() {
                report.unchained += 1;
            } else {
                report.problems.push(Problem {
                    place,
                    what: "a line without a place in the chain was inserted (or a chained line was edited beyond parsing)".into(),
                });
            }
            continue;
        };
        let hash = sha256(line.as_bytes());
        let walk = match index.get(&parsed.chain) {
            Some(&i) => &mut walks[i],
            None => {
                // A chain seen from its middle (retention removed what came
                // before) counts once a valid digest signs the lines from here.
                let starts = parsed.seq == 1 && parsed.prev == GENESIS;
                index.insert(parsed.chain.clone(), walks.len());
                walks.push(Walk {
                    report: ChainReport {
                        id: parsed.chain.clone(),
                        first_seq: parsed.seq,
                        ..Default::default()
                    },
                    expect_seq: parsed.seq,
                    expect_prev: parsed.prev,
                    prev_place: String::new(),
                    anchored: starts.then(String::new),
                    first_place: place.clone(),
                    missing: Vec::new(),
                    marks: Vec::new(),
                    policy: DigestPolicy::default(),
                    last_digest_time: None,
                    last_time: None,
                });
                walks.last_mut().expect("just pushed")
            }
        };
        if parsed.seq == walk.expect_seq {
            if parsed.prev != walk.expect_prev {
                report.problems.push(Problem {
                    place: walk.prev_place.clone(),
                    what: format!(
                        "the event at seq {} was edited (the next line's hash link does not match it)",
                        parsed.seq - 1
                    ),
                });
            }
            walk.expect_seq = parsed.seq + 1;
            walk.expect_prev = hash;
            walk.prev_place = place.clone();
        } else if parsed.seq > walk.expect_seq {
            walk.missing
                .push((walk.expect_seq, parsed.seq - 1, place.clone()));
            walk.expect_seq = parsed.seq + 1;
            walk.expect_prev = hash;
            walk.prev_place = place.clone();
        } else {
            let moved = walk
                .missing
                .iter()
                .position(|(from, to, _)| (*from..=*to).contains(&parsed.seq));
            match moved {
                Some(i) => {
                    let (from, to, at) = walk.missing.remove(i);
                    report.problems.push(Problem {
                        place: place.clone(),
                        what: format!(
                            "the event at seq {} is out of order: it belongs before {at} (events were reordered)",
                            parsed.seq
                        ),
                    });
                    if from < parsed.seq {
                        walk.missing.push((from, parsed.seq - 1, at.clone()));
                    }
                    if parsed.seq < to {
                        walk.missing.push((parsed.seq + 1, to, at));
                    }
                }
                None => report.problems.push(Problem {
                    place: place.clone(),
                    what: format!(
                        "seq {} appears again (an event was inserted or duplicated)",
                        parsed.seq
                    ),
                }),
            }
        }
        walk.report.last_seq = walk.report.last_seq.max(parsed.seq);
        if parsed.time.is_some() {
            walk.last_time = parsed.time;
        }
        match parsed.kind {
            Kind::Event => {
                walk.report.events += 1;
                walk.report.unsigned_tail += 1;
                walk.report.closed = false;
            }
            Kind::Marks(marks) => {
                walk.report.unsigned_tail += 1;
                walk.report.closed = false;
                walk.marks
                    .push((parsed.time.unwrap_or(SystemTime::UNIX_EPOCH), marks));
            }
            Kind::Digest {
                key,
                reason,
                policy,
                signature,
            } => match signature {
                Some(true) => {
                    walk.anchored.get_or_insert_with(|| place.clone());
                    walk.report.digests += 1;
                    walk.report.signed_seq = parsed.seq;
                    walk.report.signed_place = place.clone();
                    walk.report.unsigned_tail = 0;
                    walk.report.closed = reason == "stop";
                    walk.policy = policy;
                    walk.last_digest_time = parsed.time;
                    applied.append(&mut walk.marks);
                }
                Some(false) => {
                    walk.report.unsigned_tail += 1;
                    report.problems.push(Problem {
                        place: place.clone(),
                        what: format!(
                            "the digest at seq {} does not verify: it was forged or edited",
                            parsed.seq
                        ),
                    });
                }
                None => {
                    walk.report.unsigned_tail += 1;
                    report.problems.push(Problem {
                        place: place.clone(),
                        what: format!(
                            "the digest at seq {} is signed by key {:?}, which is not among the public keys given",
                            parsed.seq,
                            crate::escape::shown(&key)
                        ),
                    });
                }
            },
        }
    }
    for walk in walks {
        let mut chain = walk.report;
        if walk.anchored.is_none() {
            report.problems.push(Problem {
                place: walk.first_place.clone(),
                what: format!(
                    "chain {} begins here at seq {} and no valid digest signs it: lines of another trail were spliced in, or the lines before them were removed",
                    crate::escape::shown(&chain.id),
                    chain.first_seq
                ),
            });
        }
        for (from, to, at) in walk.missing {
            let what = if from == to {
                format!("the event at seq {from} was deleted (missing before {at})")
            } else {
                format!("the events at seq {from} to {to} were deleted (missing before {at})")
            };
            report.problems.push(Problem { place: at, what });
        }
        // A tail longer than digests allow: the digests after it were removed.
        let late = match (walk.last_digest_time, walk.last_time) {
            (Some(d), Some(t)) => t
                .duration_since(d)
                .is_ok_and(|gap| gap > walk.policy.interval * 2 + Duration::from_secs(5)),
            _ => false,
        };
        chain.overdue = chain.unsigned_tail > walk.policy.events.saturating_mul(2) + 16 || late;
        if chain.overdue {
            report.problems.push(Problem {
                place: format!("chain {}", chain.id),
                what: format!(
                    "{} lines follow the last valid digest (seq {}), more than its policy allows (one every {} lines or {} ms): digests were removed",
                    chain.unsigned_tail, chain.signed_seq, walk.policy.events, walk.policy.interval.as_millis()
                ),
            });
        }
        report.chains.push(chain);
    }
    // Revisions only grow (a delete and an undelete are new revisions too), so
    // the highest one signed by any chain, before any restart, is the floor.
    for (time, marks) in applied {
        for (id, revision) in marks {
            let entry = report.marks.entry(id).or_insert((time, revision));
            if revision > entry.1 {
                *entry = (time, revision);
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        Signer::derive(&MasterKey::from_base64(&MasterKey::generate_base64()).unwrap())
    }

    fn trail(signer: &Signer, events: usize) -> Vec<String> {
        let mut chain = Chain::new();
        let mut lines = Vec::new();
        let policy = DigestPolicy {
            events: 4,
            interval: Duration::from_secs(60),
        };
        for i in 0..events {
            let link = chain.link(&format!("{{\"method\":\"Get\",\"n\":{i}}}"));
            chain.commit(&link);
            lines.push(link.line);
            if chain.digest_due(policy) {
                let d = chain.digest(signer, DigestReason::Interval, policy);
                chain.commit(&d);
                lines.push(d.line);
            }
        }
        let d = chain.digest(signer, DigestReason::Stop, policy);
        chain.commit(&d);
        lines.push(d.line);
        lines
    }

    fn run(lines: &[String], keys: &[PublicKey]) -> Report {
        verify(
            lines
                .iter()
                .enumerate()
                .map(|(i, l)| (format!("line {}", i + 1), l.clone())),
            keys,
        )
    }

    #[test]
    fn an_intact_trail_verifies_with_the_public_key_alone() {
        let s = signer();
        let lines = trail(&s, 10);
        let key = PublicKey::parse_all(&s.public_key().to_string()).unwrap();
        let report = run(&lines, &key);
        assert!(report.intact(), "{:?}", report.problems);
        let chain = &report.chains[0];
        assert_eq!((chain.events, chain.unsigned_tail), (10, 0));
        assert!(chain.closed);
        // Another key: the digests are not accepted.
        let other = run(&lines, &[signer().public_key()]);
        assert!(!other.intact());
    }

    #[test]
    fn every_kind_of_tampering_is_named() {
        let s = signer();
        let keys = [s.public_key()];
        let lines = trail(&s, 12);
        // An edited byte.
        let mut edited = lines.clone();
        edited[1] = edited[1].replace("\"n\":1", "\"n\":7");
        let r = run(&edited, &keys);
        assert!(r.problems[0].what.contains("edited"), "{:?}", r.problems);
        assert_eq!(r.problems[0].place, "line 2");
        // A deleted line.
        let mut deleted = lines.clone();
        deleted.remove(2);
        let r = run(&deleted, &keys);
        assert!(
            r.problems.iter().any(|p| p.what.contains("deleted")),
            "{:?}",
            r.problems
        );
        // Two lines swapped.
        let mut swapped = lines.clone();
        swapped.swap(1, 2);
        let r = run(&swapped, &keys);
        assert!(
            r.problems.iter().any(|p| p.what.contains("out of order")),
            "{:?}",
            r.problems
        );
        assert!(!r.problems.iter().any(|p| p.what.contains("deleted")));
        // A forged digest.
        let mut forged = lines.clone();
        let d = forged.iter().position(|l| l.contains("digest")).unwrap();
        forged[d] = forged[d].replace("interval", "intervaL");
        let r = run(&forged, &keys);
        assert!(r
            .problems
            .iter()
            .any(|p| p.what.contains("does not verify")));
        // A dropped tail: no closing digest, reported as unsigned.
        let cut = &lines[..lines.len() - 3];
        let r = run(cut, &keys);
        assert!(r.intact());
        assert!(!r.chains[0].closed && r.chains[0].unsigned_tail == 3);
        // Another trail's lines spliced in.
        let mut spliced = lines.clone();
        let foreign = trail(&s, 12);
        spliced.insert(5, foreign[6].clone());
        let r = run(&spliced, &keys);
        assert!(r.problems.iter().any(|p| p.what.contains("spliced")));
    }

    #[test]
    fn marks_count_once_a_digest_covers_them() {
        let s = signer();
        let mut chain = Chain::new();
        let policy = DigestPolicy::default();
        let mut lines = Vec::new();
        for body in marks_bodies(&[("a".into(), 3), ("b".into(), 1)], true) {
            let l = chain.link(&body);
            chain.commit(&l);
            lines.push(l.line);
        }
        let d = chain.digest(&s, DigestReason::Interval, policy);
        chain.commit(&d);
        lines.push(d.line);
        let l = chain.link(&marks_body(&[("a".into(), 4)], false));
        chain.commit(&l);
        lines.push(l.line);
        let r = run(&lines, &[s.public_key()]);
        assert_eq!(r.marks["a"].1, 3, "the last marks are not signed yet");
        assert_eq!(r.marks["b"].1, 1);
    }

    #[test]
    fn marks_refuse_a_lower_revision_and_track_changes() {
        let m = Marks::default();
        assert!(m.check("a", 2).is_ok());
        assert_eq!(m.check("a", 1), Err(2));
        m.note("a", 5, false);
        m.note("a", 3, false);
        let (changed, seen) = m.changed_since(0);
        assert_eq!(changed, vec![("a".to_owned(), 5)]);
        // Each device asks after its own generation.
        assert!(m.changed_since(seen).0.is_empty());
        assert!(m.check("b", 1).is_ok());
        assert_eq!(m.changed_since(seen).0, vec![("b".to_owned(), 1)]);
        assert_eq!(m.changed_since(0).0.len(), 2);
        m.note("a", 1, true);
        assert_eq!(m.all()[0], ("a".to_owned(), 1));
    }
}
