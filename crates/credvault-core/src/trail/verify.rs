//! The verifier: reads a trail's lines, checks every link, digest and signature, and
//! reports per chain what is signed, what is not, and every line that was edited,
//! removed, inserted or reordered.

use super::*;

/// The chain fields (and kind) of a line, when it has them.
#[derive(Debug)]
pub(super) struct Parsed {
    pub(super) chain: String,
    pub(super) seq: u64,
    pub(super) prev: [u8; 32],
    pub(super) kind: Kind,
    pub(super) time: Option<SystemTime>,
}

#[derive(Debug)]
pub(super) enum Kind {
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
pub(super) struct Fields {
    #[serde(default)]
    pub(super) chain: Option<String>,
    #[serde(default)]
    pub(super) seq: Option<u64>,
    #[serde(default)]
    pub(super) prev: Option<String>,
    #[serde(default)]
    pub(super) kind: Option<String>,
    #[serde(default)]
    pub(super) time: Option<String>,
    #[serde(default)]
    pub(super) key: Option<String>,
    #[serde(default)]
    pub(super) reason: Option<String>,
    #[serde(default)]
    pub(super) every_events: Option<u64>,
    #[serde(default)]
    pub(super) every_ms: Option<u64>,
    #[serde(default)]
    pub(super) signature: Option<String>,
    #[serde(default)]
    pub(super) marks: Option<BTreeMap<String, u64>>,
}

pub(super) fn parse_line(line: &str) -> Option<Parsed> {
    parse_with(line, &HashMap::new())
}

pub(super) fn parse_with(line: &str, keys: &HashMap<String, PublicKey>) -> Option<Parsed> {
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
pub(super) struct Walk {
    pub(super) report: ChainReport,
    pub(super) expect_seq: u64,
    pub(super) expect_prev: [u8; 32],
    /// The place of the line whose hash `expect_prev` is.
    pub(super) prev_place: String,
    /// Whether the chain is anchored: it begins with its first line, or a valid
    /// digest signed it since the place it began here.
    pub(super) anchored: Option<String>,
    pub(super) first_place: String,
    /// Sequence numbers missing so far: (from, to, the place where the gap showed).
    pub(super) missing: Vec<(u64, u64, String)>,
    /// Marks lines not yet covered by a digest.
    pub(super) marks: Vec<(SystemTime, Vec<(String, u64)>)>,
    pub(super) policy: DigestPolicy,
    pub(super) last_digest_time: Option<SystemTime>,
    pub(super) last_time: Option<SystemTime>,
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
