//! Request validation: names, ids, descriptions, page sizes and times.
//!
//! Every check answers `INVALID_ARGUMENT` with a message that says what is
//! allowed; none echoes a secret (secrets are checked in their provider module).

use crate::error::Error;

/// The longest credential name.
pub const MAX_NAME_LEN: usize = 63;
/// The longest description, in bytes.
pub const MAX_DESCRIPTION_LEN: usize = 1024;
/// The page size when none is asked for.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// The largest page; larger requests are served this many.
pub const MAX_PAGE_SIZE: usize = 1000;

const ID_PREFIX: &str = "cred_";

/// A fresh credential id: `cred_` and a UUIDv7 in hex, so ids sort by creation time.
pub fn new_id() -> String {
    format!("{ID_PREFIX}{}", uuid::Uuid::now_v7().simple())
}

/// Checks a credential name: lowercase letters, digits, `.`, `_`, `-`; 1 to 63 characters.
pub fn name(name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::invalid("name is required"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Error::invalid(format!(
            "name must be at most {MAX_NAME_LEN} characters, not {}",
            name.len()
        )));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(Error::invalid(format!(
            "name \"{}\" may hold only lowercase letters, digits, '.', '_' and '-'",
            crate::escape::shown(name)
        )));
    }
    Ok(())
}

/// Checks a credential id's form (`cred_` and 32 lowercase hex digits).
pub fn id(id: &str) -> Result<(), Error> {
    let ok = id.strip_prefix(ID_PREFIX).is_some_and(|hex| {
        hex.len() == 32
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if ok {
        Ok(())
    } else if id.is_empty() {
        Err(Error::invalid("id is required"))
    } else {
        Err(Error::invalid(format!(
            "id \"{}\" is not a credential id (expected cred_ and 32 hex digits)",
            crate::escape::capped(id, 40)
        )))
    }
}

/// Checks a caller name as a filter names it: at most 128 bytes of printable text.
pub fn caller_name(caller: &str) -> Result<(), Error> {
    if caller.len() > crate::escape::SHOWN_BYTES
        || !matches!(crate::escape::shown(caller), std::borrow::Cow::Borrowed(_))
    {
        return Err(Error::invalid(format!(
            "caller \"{}\" is not a caller name (at most {} bytes of printable text)",
            crate::escape::shown(caller),
            crate::escape::SHOWN_BYTES
        )));
    }
    Ok(())
}

/// Checks a description's length.
pub fn description(text: &str) -> Result<(), Error> {
    if text.len() > MAX_DESCRIPTION_LEN {
        return Err(Error::invalid(format!(
            "description must be at most {MAX_DESCRIPTION_LEN} bytes, not {}",
            text.len()
        )));
    }
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(Error::invalid(
            "description may not hold control characters",
        ));
    }
    Ok(())
}

/// Checks a timestamp is a real instant between the years 1970 and 9999.
pub fn timestamp(t: prost_types::Timestamp) -> Result<prost_types::Timestamp, Error> {
    const YEAR_10000: i64 = 253_402_300_800;
    if (0..YEAR_10000).contains(&t.seconds) && (0..1_000_000_000).contains(&t.nanos) {
        Ok(t)
    } else {
        Err(Error::invalid(
            "timestamps must lie between 1970-01-01 and 9999-12-31",
        ))
    }
}

/// The page size to serve for a requested one.
pub fn page_size(requested: i32) -> Result<usize, Error> {
    match requested {
        n if n < 0 => Err(Error::invalid(format!(
            "page_size must not be negative, not {n}"
        ))),
        0 => Ok(DEFAULT_PAGE_SIZE),
        n => Ok((n as usize).min(MAX_PAGE_SIZE)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names() {
        for ok in ["a", "fleetio-acme", "x.y_z-9", &"a".repeat(63)] {
            assert!(name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Acme", "a b", "ü", "a/b", &"a".repeat(64)] {
            assert!(name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_are_time_ordered_and_valid() {
        let a = new_id();
        let b = new_id();
        assert!(a < b);
        assert!(id(&a).is_ok());
        assert!(id("cred_XYZ").is_err());
        assert!(id(&a.to_uppercase()).is_err());
    }

    #[test]
    fn page_sizes() {
        assert_eq!(page_size(0).unwrap(), 50);
        assert_eq!(page_size(5000).unwrap(), 1000);
        assert!(page_size(-1).is_err());
    }

    /// Ok, or INVALID_ARGUMENT: never another code, never a panic.
    fn invalid_or_ok<T>(r: Result<T, Error>) -> bool {
        matches!(r, Ok(_) | Err(Error::InvalidArgument(_)))
    }

    proptest! {
        #[test]
        fn bad_input_is_invalid_argument(s in ".{0,200}", n in any::<i32>()) {
            prop_assert!(invalid_or_ok(name(&s)));
            prop_assert!(invalid_or_ok(id(&s)));
            prop_assert!(invalid_or_ok(description(&s)));
            prop_assert!(invalid_or_ok(caller_name(&s)));
            prop_assert!(invalid_or_ok(page_size(n)));
        }

        #[test]
        fn bad_timestamps_are_invalid_argument(seconds in any::<i64>(), nanos in any::<i32>()) {
            let t = prost_types::Timestamp { seconds, nanos };
            prop_assert!(invalid_or_ok(timestamp(t)));
        }

        #[test]
        fn bad_secrets_are_invalid_argument(
            api_key in ".{0,300}",
            account_token in ".{0,300}",
            api_version in ".{0,20}",
        ) {
            let result = crate::provider::fleetio::secret(api_key, account_token, api_version);
            if let Err(e) = &result {
                // The message never echoes what was sent.
                prop_assert!(matches!(e, Error::InvalidArgument(_)));
            }
        }

        #[test]
        fn accepted_names_are_header_and_path_safe(s in "[a-z0-9._-]{1,63}") {
            prop_assert!(name(&s).is_ok());
        }
    }
}
