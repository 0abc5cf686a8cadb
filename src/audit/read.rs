//! Reading the trail back for `ListAuditEvents`: a place in it ([`Position`]) and the
//! events after it, from the rotated files oldest first.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};

use super::*;

/// A place in the audit trail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    /// A file (by [`file_id`], which a rename keeps; `None` for the current file, a
    /// token from before rotation existed) and a byte in it.
    File {
        /// The file's id (`None`: the current file).
        file: Option<u64>,
        /// The byte offset in it.
        offset: u64,
    },
    /// After this sequence number of the database's trail.
    Database(i64),
}

pub(super) fn read_events(
    files: Vec<(u64, File)>,
    query: &AuditQuery,
    from: Option<Position>,
    limit: usize,
) -> Result<(Vec<AuditEvent>, Option<Position>), Error> {
    let unavailable =
        |e: std::io::Error| Error::Unavailable(format!("the audit log cannot be read: {e}"));
    // Where to start: the token's file, wherever rotation moved it; the oldest
    // file when that one was deleted since (its events are gone).
    let (first, mut offset) =
        match from {
            None => (0, 0),
            Some(Position::File { file: None, offset }) => (files.len().saturating_sub(1), offset),
            Some(Position::File {
                file: Some(ino),
                offset,
            }) => match files.iter().position(|(i, _)| *i == ino) {
                Some(at) => (at, offset),
                None => (0, 0),
            },
            Some(Position::Database(_)) => return Err(Error::invalid(
                "page_token is not one this server issued; start again from an empty page_token",
            )),
        };
    let mut events = Vec::new();
    for (ino, mut file) in files.into_iter().skip(first) {
        file.seek(SeekFrom::Start(offset)).map_err(unavailable)?;
        let mut reader = BufReader::new(file);
        let mut position = offset;
        let mut line = String::new();
        loop {
            line.clear();
            let read = reader.read_line(&mut line).map_err(unavailable)?;
            if read == 0 {
                break;
            }
            if let Ok(event) = serde_json::from_str::<AuditEvent>(line.trim_end()) {
                if query.matches(&event) {
                    if events.len() == limit {
                        return Ok((
                            events,
                            Some(Position::File {
                                file: Some(ino),
                                offset: position,
                            }),
                        ));
                    }
                    events.push(event);
                }
            }
            position += read as u64;
        }
        offset = 0;
    }
    Ok((events, None))
}

/// The opaque token for a page of the audit log starting at `at`.
pub fn audit_token(at: Position) -> String {
    match at {
        Position::File {
            file: Some(file),
            offset,
        } => URL_SAFE_NO_PAD.encode(format!("audit2:{file}:{offset}")),
        Position::File { file: None, offset } => URL_SAFE_NO_PAD.encode(format!("audit:{offset}")),
        Position::Database(seq) => URL_SAFE_NO_PAD.encode(format!("auditdb:{seq}")),
    }
}

/// Where an audit page token continues; `None` for the first page.
pub fn parse_audit_token(token: &str) -> Result<Option<Position>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    let text = URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_default();
    let position = if let Some(rest) = text.strip_prefix("audit2:") {
        rest.split_once(':').and_then(|(f, o)| {
            Some(Position::File {
                file: Some(f.parse().ok()?),
                offset: o.parse().ok()?,
            })
        })
    } else if let Some(seq) = text.strip_prefix("auditdb:") {
        seq.parse().ok().filter(|s| *s >= 0).map(Position::Database)
    } else {
        // A token from before rotation: an offset in the current file.
        text.strip_prefix("audit:")
            .and_then(|o| o.parse().ok())
            .map(|offset| Position::File { file: None, offset })
    };
    position.map(Some).ok_or_else(|| {
        Error::invalid(
            "page_token is not one this server issued; start again from an empty page_token",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn page_tokens_round_trip() {
        for at in [
            Position::File {
                file: Some(77),
                offset: 1234,
            },
            Position::File {
                file: None,
                offset: 9,
            },
        ] {
            assert_eq!(parse_audit_token(&audit_token(at)).unwrap(), Some(at));
        }
        assert_eq!(parse_audit_token("").unwrap(), None);
        assert!(parse_audit_token(&URL_SAFE_NO_PAD.encode("audit2:x:1")).is_err());
    }

    proptest! {
        #[test]
        fn random_page_tokens_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let text = String::from_utf8_lossy(&bytes);
            prop_assert!(matches!(parse_audit_token(&text), Ok(_) | Err(Error::InvalidArgument(_))));
        }
    }
}
