//! Property tests for every text the vault parses from an operator or a
//! provider: the providers file, the keyring text, the callers file, a
//! provider's `Retry-After`. Whatever the text, an answer and never a panic;
//! a well-formed text is read as written; an error never repeats key material.

use std::time::Duration;

use credvault::auth::{callers_entry, Callers, Permission};
use credvault::config::parse_keyring;
use credvault::crypto::MasterKey;
use credvault::provider::declared;
use proptest::prelude::*;

/// Any text, some of it near the grammar (TOML punctuation, `=`, brackets, quotes, newlines).
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::collection::vec(proptest::char::any(), 0..400).prop_map(String::from_iter),
        proptest::collection::vec(
            prop_oneof![
                Just("[[provider]]\n".to_owned()),
                Just("[[provider.field]]\n".to_owned()),
                Just("[[provider.header]]\n".to_owned()),
                Just("[[caller]]\n".to_owned()),
                Just("name = \"x\"\n".to_owned()),
                Just("base_url = \"https://example.com/api\"\n".to_owned()),
                Just("value = \"{api_key}\"\n".to_owned()),
                Just("permissions = [\"headers.read\"]\n".to_owned()),
                Just("=".to_owned()),
                Just("\"".to_owned()),
                Just("\n".to_owned()),
                "[a-z_]{1,12}".prop_map(|s| s),
                "[ -~]{0,20}".prop_map(|s| s),
            ],
            0..40
        )
        .prop_map(|parts| parts.concat()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_providers_file_parser_answers_any_text(text in text()) {
        let _ = declared::parse(&text);
    }

    #[test]
    fn a_declared_provider_is_read_as_written(
        name in "[a-z][a-z0-9-]{2,20}",
        field in "[a-z][a-z_]{2,15}",
        header in "X-[A-Z][a-z]{2,10}",
        path in "/[a-z]{1,10}",
    ) {
        // Not a built-in provider's name.
        prop_assume!(name != "fleetio");
        let text = format!(
            "[[provider]]\nname = {name:?}\nbase_url = \"https://example.com/api\"\n\
             [[provider.field]]\nname = {field:?}\n\
             [[provider.header]]\nname = {header:?}\nvalue = \"Bearer {{{field}}}\"\n\
             [provider.verify]\npath = {path:?}\nvalid = [200]\nrejected = [401]\n"
        );
        let parsed = declared::parse(&text);
        prop_assert!(parsed.is_ok(), "{text}\n{:?}", parsed.err());
        let parsed = parsed.unwrap_or_default();
        prop_assert_eq!(parsed.len(), 1);
        prop_assert_eq!(parsed[0].name(), name.as_str());
    }

    #[test]
    fn the_keyring_parser_answers_any_text_and_never_repeats_it(text in text()) {
        if let Err(e) = parse_keyring(&text, None) {
            // A long enough token of the input is never in the message (it could be a key).
            for token in text.split(|c: char| c.is_whitespace() || c == '=' || c == '"') {
                if token.len() >= 24 {
                    prop_assert!(!e.contains(token), "the error repeats {token:?}: {e}");
                }
            }
        }
    }

    #[test]
    fn a_keyring_of_named_keys_is_read_as_written(n in 1usize..6, quoted in any::<bool>()) {
        let keys: Vec<String> = (0..n).map(|_| MasterKey::generate_base64().to_string()).collect();
        let text: String = keys
            .iter()
            .enumerate()
            .map(|(i, k)| if quoted { format!("key-{i} = \"{k}\"\n") } else { format!("# key {i}\nkey-{i} = {k}\n") })
            .collect();
        let ring = parse_keyring(&text, None);
        prop_assert!(ring.is_ok(), "{:?}", ring.err());
        let ring = ring.map_err(TestCaseError::fail)?;
        prop_assert_eq!(ring.ids().count(), n);
        let active = format!("key-{}", n - 1);
        prop_assert_eq!(ring.active().id(), active.as_str());
        // A key broken by one character is refused, and the error does not show it.
        let broken = text.replace(&keys[0][..8], "!!!!!!!!");
        if let Err(e) = parse_keyring(&broken, None) {
            prop_assert!(!e.contains(&keys[0][8..]), "{e}");
        }
    }

    #[test]
    fn the_callers_parser_answers_any_text(text in text()) {
        let _ = Callers::from_toml(&text);
    }

    #[test]
    fn callers_are_read_as_written(names in proptest::collection::btree_set("[a-z][a-z0-9-]{0,15}", 1..8)) {
        let text: String = names
            .iter()
            .map(|n| callers_entry(n, &format!("token-of-{n}-0123456789abcdef"), &[Permission::HeadersRead]))
            .collect::<Vec<_>>()
            .join("\n");
        let callers = Callers::from_toml(&text);
        prop_assert!(callers.is_ok(), "{text}\n{:?}", callers.err());
        prop_assert_eq!(callers.map(|c| c.len()).unwrap_or(0), names.len());
        // The same caller twice is refused by name.
        let first = names.iter().next().cloned().unwrap_or_default();
        let twice = format!("{text}\n{}", callers_entry(&first, "another-token-0123456789", &[]));
        let refused = Callers::from_toml(&twice).err().map(|e| e.to_string()).unwrap_or_default();
        prop_assert!(refused.contains(&first), "{refused}");
    }

    #[test]
    fn retry_after_reads_seconds_and_answers_any_value(
        secs in 0u64..10_000_000,
        junk in "[ -~]{0,40}",
    ) {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, secs.to_string().parse().map_err(|_| TestCaseError::fail("a value"))?);
        prop_assert_eq!(credvault_client::budget::retry_after(&headers), Some(Duration::from_secs(secs)));
        if let Ok(value) = junk.parse() {
            headers.insert(http::header::RETRY_AFTER, value);
            // Any value: an answer, never a panic; a date in the past is no wait at all.
            let _ = credvault_client::budget::retry_after(&headers);
        }
    }
}
