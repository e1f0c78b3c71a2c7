//! The identity URL (`id`) of a Salesforce token response and Salesforce record ids.
//!
//! Salesforce Help "Identity URLs": `https://{host}/id/{orgId}/{userId}`; org ids start with
//! `00D`, user ids with `005`. Ids come in a case-sensitive 15-character form and a
//! case-insensitive 18-character form whose last three characters encode the case of the
//! first fifteen (Salesforce Help "What are Salesforce IDs composed of?"). We always store
//! the 18-character form so that both spellings of one id compare equal.
//!
//! Salesforce's own 18-character ids always carry a valid suffix. One that does not (a peer
//! speaking Salesforce's protocol, a future id format) is kept exactly as sent, with a
//! warning: refusing a working token response over a cosmetic checksum would fail the whole
//! connection for nothing.

use url::Url;

use super::SalesforceError;

/// Alphabet of the 18-character id checksum suffix.
const SUFFIX_ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";

/// Parses the `id` URL `https://host/id/{orgId}/{userId}`: the last two path segments, each
/// 15 or 18 alphanumeric chars, org id starting "00D", user id starting "005"; 15-char ids
/// are converted to their 18-char form (Salesforce's case-safe checksum suffix); 18-char ids
/// whose suffix does not verify are kept as sent (with a warning). Returns (org_id, user_id).
pub fn parse_identity_url(id: &str) -> Result<(String, String), SalesforceError> {
    let invalid = |why: &str| SalesforceError::InvalidResponse(format!("identity URL {why}"));
    let url = Url::parse(id).map_err(|_| invalid("is not a URL"))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(invalid("is not an http(s) URL"));
    }
    let segments: Vec<&str> = url
        .path_segments()
        .map(|s| s.filter(|seg| !seg.is_empty()).collect())
        .unwrap_or_default();
    let [.., org, user] = segments.as_slice() else {
        return Err(invalid("lacks the org and user id segments"));
    };
    let org = normalise_id(org, "00D").ok_or_else(|| invalid("has no valid org id (00D…)"))?;
    let user = normalise_id(user, "005").ok_or_else(|| invalid("has no valid user id (005…)"))?;
    Ok((org, user))
}

/// Checks prefix and length and returns the 18-character form. An 18-character id whose
/// checksum suffix does not match its first fifteen characters is returned as sent, with a
/// warning (see the module docs for why it is not refused).
fn normalise_id(id: &str, prefix: &str) -> Option<String> {
    if !id.starts_with(prefix) || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    match id.len() {
        15 => to_18_char_id(id),
        18 => {
            let expected = to_18_char_id(&id[..15])?;
            if expected[15..].eq_ignore_ascii_case(&id[15..]) {
                Some(expected)
            } else {
                // Ids are not secret (they appear in every identity URL and API path).
                tracing::warn!(
                    id,
                    expected_suffix = &expected[15..],
                    "Salesforce id with a case-checksum suffix that does not verify; kept as sent"
                );
                Some(id.to_owned())
            }
        }
        _ => None,
    }
}

/// Converts a 15-character case-sensitive id to its 18-character form: for each 5-character
/// chunk, bit `i` is set when character `i` is an upper-case letter, and the 5-bit value picks
/// a character of `A..Z0..5`. Returns `None` unless `id15` is 15 ASCII alphanumerics.
pub fn to_18_char_id(id15: &str) -> Option<String> {
    if id15.len() != 15 || !id15.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    let mut out = String::with_capacity(18);
    out.push_str(id15);
    for chunk in id15.as_bytes().chunks(5) {
        let bits = chunk
            .iter()
            .enumerate()
            .filter(|(_, b)| b.is_ascii_uppercase())
            .fold(0usize, |acc, (i, _)| acc | (1 << i));
        out.push(char::from(*SUFFIX_ALPHABET.get(bits)?));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn known_pairs() {
        for (id, expected) in [
            // Published examples of the 15 → 18 conversion.
            ("001A0000006Vm9r", "001A0000006Vm9rIAC"),
            // 005D0000001az5d: chunks "005D0" (D at index 3 → 8 → 'I'), "00000" (→ 'A'),
            // "1az5d" (→ 'A').
            ("005D0000001az5d", "005D0000001az5dIAA"),
            // All upper-case letters in every chunk → 31 → '5'.
            ("ABCDEFGHIJKLMNO", "ABCDEFGHIJKLMNO555"),
            ("00D000000000000", "00D000000000000EAA"),
        ] {
            assert_eq!(to_18_char_id(id).as_deref(), Some(expected), "{id}");
        }
        assert_eq!(to_18_char_id("short"), None);
        assert_eq!(to_18_char_id("005D0000001az5-"), None);
        assert_eq!(to_18_char_id("005D0000001az5dé"), None);
    }

    #[test]
    fn independent_reference_algorithm() {
        // Re-implementation written the way the Salesforce docs describe it: reverse each
        // 5-char chunk, map upper-case to '1' else '0', read as binary.
        fn reference(id: &str) -> String {
            let alphabet: Vec<char> = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345".chars().collect();
            let mut s = id.to_string();
            for i in 0..3 {
                let chunk: String = id[i * 5..i * 5 + 5]
                    .chars()
                    .rev()
                    .map(|c| if c.is_ascii_uppercase() { '1' } else { '0' })
                    .collect();
                s.push(alphabet[usize::from_str_radix(&chunk, 2).unwrap()]);
            }
            s
        }
        for id in [
            "005xx000001Sv6e",
            "00Dxx0000001gPL",
            "a0B5g00000AbCdE",
            "005Zz9YyXxWwVvU",
        ] {
            assert_eq!(to_18_char_id(id).unwrap(), reference(id), "{id}");
        }
    }

    #[test]
    fn identity_urls() {
        for (url, org, user) in [
            (
                "https://login.salesforce.com/id/00D000000000000/005D0000001az5d",
                "00D000000000000EAA",
                "005D0000001az5dIAA",
            ),
            // 18-character ids pass through; a trailing slash is tolerated.
            (
                "https://acme.my.salesforce.com/id/00D000000000000EAA/005D0000001az5dIAA/",
                "00D000000000000EAA",
                "005D0000001az5dIAA",
            ),
            // Lower-case checksum suffix is accepted and normalised.
            (
                "https://login.salesforce.com/id/00D000000000000EAA/005D0000001az5diaa",
                "00D000000000000EAA",
                "005D0000001az5dIAA",
            ),
            // A wrong checksum is kept as sent.
            (
                "https://login.salesforce.com/id/00D000000000000EAB/005D0000001az5dAAA",
                "00D000000000000EAB",
                "005D0000001az5dAAA",
            ),
            // 15-character ids are still normalised next to a kept 18-character one.
            (
                "https://login.salesforce.com/id/00D000000000000/005D0000001az5dzzz",
                "00D000000000000EAA",
                "005D0000001az5dzzz",
            ),
        ] {
            let parsed = parse_identity_url(url).unwrap();
            assert_eq!((parsed.0.as_str(), parsed.1.as_str()), (org, user), "{url}");
        }
    }

    #[test]
    fn bad_identity_urls() {
        for bad in [
            "not a url",
            "https://login.salesforce.com/id/005D0000001az5d/00D000000000000", // swapped
            "https://login.salesforce.com/id/001000000000000/005D0000001az5d", // not 00D
            "https://login.salesforce.com/id/00D000000000000/003D0000001az5d", // not 005
            "https://login.salesforce.com/id/00D00000000000/005D0000001az5d",  // 14 chars
            "https://login.salesforce.com/id/00D000000000000/005D0000001az5dIA", // 17 chars
            "https://login.salesforce.com/id/00D000000000000/005D0000001az5%21", // not alnum
            "https://login.salesforce.com/005D0000001az5d",
            "ftp://login.salesforce.com/id/00D000000000000/005D0000001az5d",
        ] {
            let e = parse_identity_url(bad).unwrap_err();
            assert!(
                matches!(e, SalesforceError::InvalidResponse(_)),
                "{bad}: {e:?}"
            );
        }
    }
}
