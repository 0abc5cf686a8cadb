//! Marks: each credential's highest revision, as the trail signs them (shared by the
//! vault, which refuses a record older than one it has seen, and the audit log).

use super::*;

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
    pub(super) inner: Mutex<MarksInner>,
}

#[derive(Debug, Default)]
pub(super) struct MarksInner {
    /// Credential id → (revision, generation of the change).
    pub(super) seen: HashMap<String, (u64, u64)>,
    pub(super) generation: u64,
}

impl Marks {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, MarksInner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The highest revision of `id` seen so far.
    pub fn seen(&self, id: &str) -> Option<u64> {
        self.lock().seen.get(id).map(|&(revision, _)| revision)
    }

    /// A read `revision` of `id`: `Err(floor)` when it is below `floor`, the mark
    /// taken (with [`Marks::seen`]) before the read began, since every revision up
    /// to it was written or read before then; else noted, unless a higher one was
    /// seen. A read that raced a write may return the revision before it: that is
    /// no replay, so a mark set during the read does not refuse it.
    pub fn check(&self, id: &str, revision: u64, floor: Option<u64>) -> Result<(), u64> {
        if let Some(floor) = floor.filter(|&floor| revision < floor) {
            return Err(floor);
        }
        let mut inner = self.lock();
        match inner.seen.get(id) {
            Some(&(seen, _)) if revision <= seen => Ok(()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_that_raced_a_write_is_no_replay_and_one_after_it_is() {
        let marks = Marks::default();
        marks.note("c", 3, false);
        // A read begins with 3 seen; a write of 4 ends while it is under way.
        let floor = marks.seen("c");
        marks.note("c", 4, false);
        assert_eq!(marks.check("c", 3, floor), Ok(()));
        assert_eq!(marks.seen("c"), Some(4));
        // A read that begins after the write and finds 3: put back behind the vault's back.
        assert_eq!(marks.check("c", 3, marks.seen("c")), Err(4));
        // A newer revision (another replica's write) is noted.
        assert_eq!(marks.check("c", 6, marks.seen("c")), Ok(()));
        assert_eq!(marks.seen("c"), Some(6));
    }
}
