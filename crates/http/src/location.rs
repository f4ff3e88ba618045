//! Location values tine builds from a request. A path-only Location must stay
//! on this host: `//evil.test/x` and `/\evil.test/x` are read by browsers as
//! a protocol-relative URL to another host, so the joint between a configured
//! prefix and the request's path never doubles its slash, request bytes are
//! escaped where a browser would treat them as a separator (`\`) or where
//! they could not appear in a field value, and a result that would still
//! leave the host is refused.

/// Appends request bytes (a path or a query) to a Location, escaping `\` and
/// anything that is not visible ASCII as `%XX`.
pub fn push_request_bytes(location: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if b == b'\\' || !(b'!'..=b'~').contains(&b) {
            location.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        } else {
            location.push(b);
        }
    }
}

/// Appends the rest of a request path to a configured prefix with exactly one
/// slash between them: `/` + `/evil.test/x` is `/evil.test/x`, `/new` + `a`
/// is `/new/a`, and a bare origin (`https://host`) gets its path.
pub fn join_path(location: &mut Vec<u8>, rest: &[u8]) {
    let bare_origin = location.iter().filter(|&&b| b == b'/').count() == 2 && location.contains(&b':');
    let rest = match (location.last() == Some(&b'/'), rest.strip_prefix(b"/")) {
        (true, Some(tail)) => tail,
        _ => rest,
    };
    if location.last() != Some(&b'/') && (bare_origin || !rest.is_empty()) && !rest.starts_with(b"/") {
        location.push(b'/');
    }
    push_request_bytes(location, rest);
}

/// Whether a Location names another host although it was meant as a path:
/// it starts with `//` or `/\` (browsers treat `\` as `/`).
pub fn leaves_the_host(location: &[u8]) -> bool {
    matches!(location, [b'/', b'/' | b'\\', ..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(prefix: &str, rest: &str) -> String {
        let mut l = prefix.as_bytes().to_vec();
        join_path(&mut l, rest.as_bytes());
        String::from_utf8(l).unwrap()
    }

    #[test]
    fn a_root_prefix_never_makes_a_protocol_relative_url() {
        assert_eq!(joined("/", "/evil.test/x"), "/evil.test/x");
        assert_eq!(joined("/", "/\\evil.test/x"), "/%5Cevil.test/x");
        assert!(!leaves_the_host(joined("/", "/evil.test").as_bytes()));
    }

    #[test]
    fn prefixes_and_rests_meet_at_one_slash() {
        assert_eq!(joined("/new", "/a/b"), "/new/a/b");
        assert_eq!(joined("/new/", "/a"), "/new/a");
        assert_eq!(joined("/new/", "a"), "/new/a");
        assert_eq!(joined("/new", "a"), "/new/a");
        assert_eq!(joined("/new", ""), "/new");
        assert_eq!(joined("https://other.test", ""), "https://other.test/");
        assert_eq!(joined("https://other.test", "/a"), "https://other.test/a");
        assert_eq!(joined("https://other.test/base", "/a"), "https://other.test/base/a");
    }

    #[test]
    fn request_bytes_that_could_redirect_or_break_a_field_are_escaped() {
        let mut l = Vec::new();
        push_request_bytes(&mut l, b"/a\\b c\r\n\x7f?q=\\");
        assert_eq!(l, b"/a%5Cb%20c%0D%0A%7F?q=%5C");
    }

    #[test]
    fn what_leaves_the_host() {
        assert!(leaves_the_host(b"//evil.test"));
        assert!(leaves_the_host(b"/\\evil.test"));
        assert!(!leaves_the_host(b"/ok"));
        assert!(!leaves_the_host(b"https://other.test/"));
    }
}
