//! Values a caller sent, made safe to record: control characters, NUL and
//! bidirectional marks escaped, and the text capped (marked as cut), so that no
//! value reaches a log line, an audit event or an error message raw.
//!
//! A leaf: it imports nothing of the crate.

use std::borrow::Cow;
use std::fmt::Write as _;

/// How many bytes of a caller's value are recorded where it named something.
pub const SHOWN_BYTES: usize = 128;

/// Whether `c` would be recorded as it is: printable, not a bidirectional control.
fn plain(c: char) -> bool {
    !c.is_control()
        && !matches!(
            c,
            '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}'
        )
}

/// `s` as it may be recorded: unchanged (borrowed, no copy) when it is at most
/// `cap` bytes of printable text; else every control character, NUL and
/// bidirectional mark as `\u{..}`, cut at `cap` bytes with `…[cut: N bytes]`.
pub fn capped(s: &str, cap: usize) -> Cow<'_, str> {
    if s.len() <= cap && s.chars().all(plain) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(cap.min(s.len()) + 24);
    for c in s.chars() {
        let before = out.len();
        if plain(c) {
            out.push(c);
        } else {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
        if out.len() > cap {
            out.truncate(before);
            let _ = write!(out, "…[cut: {} bytes]", s.len());
            break;
        }
    }
    Cow::Owned(out)
}

/// A caller's value as an error message or a log line names it: [`capped`] at
/// [`SHOWN_BYTES`].
pub fn shown(s: &str) -> Cow<'_, str> {
    capped(s, SHOWN_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_short_text_is_borrowed() {
        assert!(matches!(
            shown("fleetio-acme"),
            Cow::Borrowed("fleetio-acme")
        ));
        assert!(matches!(shown("Grüße, 東京"), Cow::Borrowed(_)));
    }

    #[test]
    fn controls_nul_and_bidi_marks_are_escaped() {
        assert_eq!(shown("a\0b"), "a\\u{0}b");
        assert_eq!(shown("x\ny\u{202e}z"), "x\\u{a}y\\u{202e}z");
    }

    #[test]
    fn long_text_is_cut_and_says_so() {
        let long = "é".repeat(5000);
        let s = shown(&long);
        assert!(s.len() <= SHOWN_BYTES + 32, "{}", s.len());
        assert!(s.ends_with("…[cut: 10000 bytes]"), "{s}");
    }

    proptest! {
        #[test]
        fn any_text_comes_out_bounded_and_without_controls(s in any::<String>(), cap in 1usize..300) {
            let out = capped(&s, cap);
            prop_assert!(out.len() <= cap + 40);
            prop_assert!(out.chars().all(plain));
        }
    }
}
