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

mod marks;
mod verify;

pub use marks::*;
pub use verify::*;

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
        assert!(m.check("a", 2, m.seen("a")).is_ok());
        assert_eq!(m.check("a", 1, m.seen("a")), Err(2));
        m.note("a", 5, false);
        m.note("a", 3, false);
        let (changed, seen) = m.changed_since(0);
        assert_eq!(changed, vec![("a".to_owned(), 5)]);
        // Each device asks after its own generation.
        assert!(m.changed_since(seen).0.is_empty());
        assert!(m.check("b", 1, m.seen("b")).is_ok());
        assert_eq!(m.changed_since(seen).0, vec![("b".to_owned(), 1)]);
        assert_eq!(m.changed_since(0).0.len(), 2);
        m.note("a", 1, true);
        assert_eq!(m.all()[0], ("a".to_owned(), 1));
    }
}
