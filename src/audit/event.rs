//! What the trail records: an audited call ([`AuditEvent`], [`AuditEntry`]), where it came
//! from ([`Peer`]), and what a listing asks for ([`AuditQuery`]).

use super::*;

/// The most bytes of an event's field as recorded (escaped, then cut, see [`crate::escape`]).
pub const FIELD_BYTES: usize = 256;
/// The most bytes of an event's reason as recorded.
pub const REASON_BYTES: usize = 1024;

/// One audited RPC. Never holds a secret or a token.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// UTC, RFC 3339 with microseconds.
    pub time: String,
    /// The caller's name, or `anonymous`.
    pub caller: String,
    /// The peer's address.
    pub peer: String,
    /// The RPC, e.g. `GetCredentialHeaders`.
    pub method: String,
    /// The credential's id (empty when the call named none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub credential_id: String,
    /// The credential's name, when known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub credential_name: String,
    /// The gRPC outcome, e.g. `OK`, `PERMISSION_DENIED`.
    pub code: String,
    /// For secret reads: HMAC-SHA256 of the secret read, keyed from the master key (hex, 128 bits).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret_fingerprint: String,
    /// For a refused call: why.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// For a summary of refused calls: how many it stands for (0: one call, this one).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub count: u64,
    /// Where the call came in: `console` for the web console; empty for gRPC.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub channel: String,
}

pub(super) fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// An event as it is recorded: borrowed from the call and written without
/// copies (the same JSON as [`AuditEvent`]).
#[derive(Debug, Serialize)]
pub struct AuditEntry<'a> {
    /// When the call was answered.
    #[serde(serialize_with = "rfc3339_micros")]
    pub time: SystemTime,
    /// The caller's name.
    pub caller: &'a str,
    /// `unknown` when not known.
    pub peer: Peer<'a>,
    /// The RPC's name.
    pub method: &'a str,
    /// The credential's id, when the call named one.
    #[serde(skip_serializing_if = "is_empty")]
    pub credential_id: &'a str,
    /// The credential's name, when known.
    #[serde(skip_serializing_if = "is_empty")]
    pub credential_name: &'a str,
    /// The gRPC status code, by name.
    pub code: &'a str,
    /// The fingerprint of the secret read or written (never the secret).
    #[serde(skip_serializing_if = "is_empty")]
    pub secret_fingerprint: &'a str,
    /// Why it was refused, when it was.
    #[serde(skip_serializing_if = "is_empty")]
    pub reason: &'a str,
    /// How many calls the event stands for (a summary of refusals: more than 1).
    #[serde(skip_serializing_if = "is_zero")]
    pub count: u64,
    /// `console` for a call made through the web console; empty for gRPC.
    #[serde(skip_serializing_if = "is_empty")]
    pub channel: &'a str,
}

impl<'a> AuditEntry<'a> {
    /// An entry for `caller` at `peer` with the other fields empty.
    pub fn new(time: SystemTime, caller: &'a str, peer: Option<std::net::SocketAddr>) -> Self {
        AuditEntry {
            time,
            caller,
            peer: Peer::Addr(peer),
            method: "",
            credential_id: "",
            credential_name: "",
            code: "",
            secret_fingerprint: "",
            reason: "",
            count: 0,
            channel: "",
        }
    }
}

/// Where a call came from: its address, or for a summary, the peer it stands for.
#[derive(Clone, Copy, Debug)]
pub enum Peer<'a> {
    /// The peer's address, when known.
    Addr(Option<std::net::SocketAddr>),
    /// A label for the peers a summary stands for.
    Label(&'a str),
}

impl Serialize for Peer<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Peer::Addr(Some(addr)) => s.collect_str(addr),
            Peer::Addr(None) => s.serialize_str("unknown"),
            Peer::Label(label) => s.serialize_str(label),
        }
    }
}

pub(super) fn rfc3339_micros<S: serde::Serializer>(
    time: &SystemTime,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_micros(*time))
}

pub(super) fn is_empty(s: &&str) -> bool {
    s.is_empty()
}

impl AuditEvent {
    /// When the event happened.
    pub fn system_time(&self) -> Option<SystemTime> {
        humantime::parse_rfc3339(&self.time).ok()
    }
}

/// What a listing asks for.
#[derive(Debug, Default)]
pub struct AuditQuery {
    /// Only events of this credential id.
    pub credential_id: Option<String>,
    /// Only events of this credential name.
    pub credential_name: Option<String>,
    /// Only events of this caller.
    pub caller: Option<String>,
    /// Only events at or after this time.
    pub start: Option<SystemTime>,
    /// Only events before this time.
    pub end: Option<SystemTime>,
}

impl AuditQuery {
    pub(super) fn matches(&self, e: &AuditEvent) -> bool {
        let eq = |want: &Option<String>, got: &str| want.as_deref().is_none_or(|w| w == got);
        let time = e.system_time();
        eq(&self.credential_id, &e.credential_id)
            && eq(&self.credential_name, &e.credential_name)
            && eq(&self.caller, &e.caller)
            && self.start.is_none_or(|s| time.is_some_and(|t| t >= s))
            && self.end.is_none_or(|end| time.is_some_and(|t| t < end))
    }
}
