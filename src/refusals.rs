//! Refused calls that cannot fill a disk: the first refusals from each peer (or,
//! once authenticated, each caller) in an interval are logged and audited one by
//! one, the rest only counted, and each interval ends with one summary per peer
//! or caller ("N calls refused from PEER").
//!
//! Memory and output are bounded whatever the flood: a few full records per peer
//! and per interval, a fixed number of peers tracked, a fixed number of summaries.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

/// Refusals from one peer recorded in full per interval.
pub const FULL_PER_PEER: u32 = 5;
/// Refusals recorded in full per interval, from all peers together.
pub const FULL_PER_INTERVAL: u32 = 50;
/// Peers tracked per interval; refusals from further peers are counted together.
pub const MAX_PEERS: usize = 4096;
/// Summaries written per interval: the peers with the most refusals, then one for the rest.
pub const MAX_SUMMARIES: usize = 20;

/// Who a refusal came from: an IPv4 address, or an IPv6 /64 (an attacker holds a
/// whole /64 as easily as one address).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeerKey {
    /// An IPv4 address.
    V4(std::net::Ipv4Addr),
    /// The first 64 bits of an IPv6 address.
    V6Prefix([u8; 8]),
    /// No address (an in-process call).
    Unknown,
}

impl PeerKey {
    /// The key of a peer address.
    pub fn of(peer: Option<SocketAddr>) -> Self {
        match peer.map(|p| p.ip()) {
            Some(IpAddr::V4(ip)) => PeerKey::V4(ip),
            Some(IpAddr::V6(ip)) => match ip.to_ipv4_mapped() {
                Some(v4) => PeerKey::V4(v4),
                None => {
                    let o = ip.octets();
                    PeerKey::V6Prefix([o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]])
                }
            },
            None => PeerKey::Unknown,
        }
    }
}

impl fmt::Display for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerKey::V4(ip) => write!(f, "{ip}"),
            PeerKey::V6Prefix(p) => {
                let mut full = [0u8; 16];
                full[..8].copy_from_slice(p);
                write!(f, "{}/64", std::net::Ipv6Addr::from(full))
            }
            PeerKey::Unknown => f.write_str("unknown"),
        }
    }
}

/// The methods a count of calls named.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Methods {
    #[default]
    Nothing,
    One(&'static str),
    Several,
}

impl Methods {
    fn and(self, other: Methods) -> Methods {
        match (self, other) {
            (Methods::Nothing, m) | (m, Methods::Nothing) => m,
            (Methods::One(a), Methods::One(b)) if a == b => self,
            _ => Methods::Several,
        }
    }

    fn one(self) -> Option<&'static str> {
        match self {
            Methods::One(m) => Some(m),
            _ => None,
        }
    }
}

#[derive(Debug, Default)]
struct Count {
    full: u32,
    counted: u64,
    methods: Methods,
}

impl Count {
    fn count(&mut self, method: &'static str) {
        self.counted += 1;
        self.methods = self.methods.and(Methods::One(method));
    }
}

/// Whom a count of refusals is kept for: a peer (calls not authenticated) or a
/// known caller (authenticated calls refused, e.g. PERMISSION_DENIED).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Who {
    Peer(PeerKey),
    Caller(String),
}

#[derive(Debug, Default)]
struct Interval {
    peers: HashMap<(Who, &'static str), Count>,
    full: u32,
    /// Refusals from peers beyond [`MAX_PEERS`], by reason.
    untracked: HashMap<&'static str, Count>,
}

/// What the interval's refusals not recorded one by one came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// The peer (an address or a /64), or `other peers`; `several` for a caller's.
    pub peer: String,
    /// The known caller the calls were made as (`None`: not authenticated).
    pub caller: Option<String>,
    /// Why the calls were refused.
    pub reason: &'static str,
    /// The method, when every call named the same one.
    pub method: Option<&'static str>,
    /// How many calls the summary stands for.
    pub count: u64,
}

/// The refusal counts of the current interval.
#[derive(Debug, Default)]
pub struct Refusals {
    interval: Mutex<Interval>,
}

impl Refusals {
    /// An empty tally.
    pub fn new() -> Self {
        Self::default()
    }

    /// Notes a refused call; true when it is to be logged and audited in full,
    /// false when it is only counted for the interval's summary.
    pub fn admit(
        &self,
        peer: Option<SocketAddr>,
        method: &'static str,
        reason: &'static str,
    ) -> bool {
        self.admit_key((Who::Peer(PeerKey::of(peer)), reason), method)
    }

    /// Notes a call of a known caller refused with `code` (e.g. `PERMISSION_DENIED`);
    /// true when it is to be logged and audited in full, false when only counted
    /// for the caller's summary. Callers are few (the callers file names them).
    pub fn admit_caller(&self, caller: &str, method: &'static str, code: &'static str) -> bool {
        self.admit_key((Who::Caller(caller.to_owned()), code), method)
    }

    fn admit_key(&self, key: (Who, &'static str), method: &'static str) -> bool {
        let mut interval = self
            .interval
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let interval = &mut *interval;
        let tracked = interval.peers.len() < MAX_PEERS || interval.peers.contains_key(&key);
        if !tracked {
            interval.untracked.entry(key.1).or_default().count(method);
            return false;
        }
        let count = interval.peers.entry(key).or_default();
        if count.full < FULL_PER_PEER && interval.full < FULL_PER_INTERVAL {
            count.full += 1;
            interval.full += 1;
            true
        } else {
            count.count(method);
            false
        }
    }

    /// Ends the interval: the summaries of what was only counted in it, largest first.
    pub fn take(&self) -> Vec<Summary> {
        let interval = std::mem::take(
            &mut *self
                .interval
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let mut counted: Vec<_> = interval
            .peers
            .into_iter()
            .filter(|(_, c)| c.counted > 0)
            .collect();
        counted.sort_by(|a, b| {
            b.1.counted
                .cmp(&a.1.counted)
                .then(format!("{:?}", a.0 .0).cmp(&format!("{:?}", b.0 .0)))
        });
        let rest = counted.split_off(counted.len().min(MAX_SUMMARIES));
        let mut out: Vec<Summary> = counted
            .into_iter()
            .map(|((who, reason), c)| Summary {
                peer: match &who {
                    Who::Peer(peer) => peer.to_string(),
                    Who::Caller(_) => "several".to_owned(),
                },
                caller: match who {
                    Who::Peer(_) => None,
                    Who::Caller(name) => Some(name),
                },
                reason,
                method: c.methods.one(),
                count: c.counted,
            })
            .collect();
        // The rest, and the peers beyond the table, one summary per reason.
        let mut others: HashMap<&'static str, Count> = HashMap::new();
        let rest = rest.into_iter().map(|((_, reason), c)| (reason, c));
        for (reason, c) in rest.chain(interval.untracked) {
            let total = others.entry(reason).or_default();
            total.counted += c.counted;
            total.methods = total.methods.and(c.methods);
        }
        let mut others: Vec<_> = others.into_iter().collect();
        others.sort_by_key(|(reason, _)| *reason);
        for (reason, c) in others {
            out.push(Summary {
                peer: "other peers".to_owned(),
                caller: None,
                reason,
                method: c.methods.one(),
                count: c.counted,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn a_flood_from_one_peer_is_recorded_a_few_times_then_counted() {
        let r = Refusals::new();
        let full = (0..20_000)
            .filter(|i| {
                r.admit(
                    addr(&format!("10.0.0.1:{}", 1000 + i % 5000)),
                    "GetCredential",
                    "invalid bearer token",
                )
            })
            .count();
        assert_eq!(full, FULL_PER_PEER as usize);
        let summaries = r.take();
        assert_eq!(
            summaries,
            [Summary {
                peer: "10.0.0.1".into(),
                caller: None,
                reason: "invalid bearer token",
                method: Some("GetCredential"),
                count: 20_000 - u64::from(FULL_PER_PEER),
            }]
        );
        // A new interval starts afresh.
        assert!(r.admit(addr("10.0.0.1:1"), "GetCredential", "invalid bearer token"));
        assert!(r.take().is_empty());
    }

    #[test]
    fn many_peers_stay_bounded_and_every_call_is_counted() {
        let r = Refusals::new();
        let mut full = 0u64;
        let total = 30_000u64;
        for i in 0..total {
            // IPv6 peers in 6,000 different /64s, two methods.
            let peer = addr(&format!(
                "[2001:db8:{:x}:{:x}::{:x}]:443",
                i % 3,
                i % 2000,
                i
            ));
            let method = if i % 2 == 0 {
                "GetCredential"
            } else {
                "ListCredentials"
            };
            full += u64::from(r.admit(peer, method, "missing credentials"));
        }
        assert!(full <= u64::from(FULL_PER_INTERVAL));
        let summaries = r.take();
        assert!(summaries.len() <= MAX_SUMMARIES + 1);
        let counted: u64 = summaries.iter().map(|s| s.count).sum();
        assert_eq!(
            full + counted,
            total,
            "every refusal is in full or in a summary"
        );
        assert!(summaries.last().unwrap().peer.ends_with("other peers"));
        assert!(summaries[0].peer.ends_with("/64"), "{:?}", summaries[0]);
    }

    #[test]
    fn a_known_callers_refusals_are_summarized_per_caller_and_code() {
        let r = Refusals::new();
        let full = (0..10_000)
            .filter(|_| r.admit_caller("worker", "GetCredentialHeaders", "PERMISSION_DENIED"))
            .count();
        assert_eq!(full, FULL_PER_PEER as usize);
        assert!(r.admit_caller("worker", "GetCredentialHeaders", "NOT_FOUND"));
        assert!(r.admit_caller("other", "GetCredentialHeaders", "PERMISSION_DENIED"));
        assert_eq!(
            r.take(),
            [Summary {
                peer: "several".into(),
                caller: Some("worker".into()),
                reason: "PERMISSION_DENIED",
                method: Some("GetCredentialHeaders"),
                count: 10_000 - u64::from(FULL_PER_PEER),
            }]
        );
    }

    #[test]
    fn peers_are_keyed_by_address_or_slash_64() {
        assert_eq!(PeerKey::of(addr("10.1.2.3:5")).to_string(), "10.1.2.3");
        assert_eq!(
            PeerKey::of(addr("[2001:db8:1:2:3:4:5:6]:5")).to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            PeerKey::of(addr("[::ffff:10.1.2.3]:5")).to_string(),
            "10.1.2.3"
        );
        assert_eq!(PeerKey::of(None).to_string(), "unknown");
    }
}
