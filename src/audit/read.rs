//! Reading the trail back for `ListAuditEvents`: a place in it ([`Position`]) and the
//! events after it, from the rotated files oldest first.

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
