//! Entry points for fuzzing the edge's own HTTP/1.1 request parser against httparse, the parser
//! it builds on (`fuzz/` and the corpus regression test in `crates/fuzzcheck`). Not an API.

use bytes::BytesMut;

/// Parses `bytes` as the fast path would and panics where it disagrees with a reading of the
/// same bytes by httparse and RFC 9112's framing rules: a request the fast path serves must be
/// one httparse reads whole, with no `Transfer-Encoding`, a `Content-Length` of digits only
/// (all copies equal) that is its body's length, and not `CONNECT`; one it hands to hyper must
/// be handed over unchanged; one it waits on must be one httparse has not finished.
pub fn request(bytes: &[u8]) {
    let mut buf = BytesMut::from(bytes);
    let mut lines = [httparse::EMPTY_HEADER; crate::server::MAX_HEADERS];
    let mut reference = httparse::Request::new(&mut lines);
    let verdict = reference.parse(bytes);
    match crate::server::parse_for_fuzzing(&mut buf, 10 * 1024 * 1024) {
        crate::server::FuzzVerdict::Request {
            body_len,
            keep_alive,
            head_len,
        } => {
            let Ok(httparse::Status::Complete(len)) = verdict else {
                panic!("served a head httparse does not read whole: {verdict:?}");
            };
            assert_eq!(len, head_len, "head lengths differ");
            assert_eq!(&buf[..], &bytes[len..], "the bytes after the head are not what is left");
            assert_ne!(reference.method, Some("CONNECT"));
            assert_eq!(reference.version, Some(1));
            let mut length = None;
            let mut close = false;
            for h in reference.headers.iter() {
                assert!(
                    !h.name.eq_ignore_ascii_case("transfer-encoding"),
                    "served a request with Transfer-Encoding"
                );
                if h.name.eq_ignore_ascii_case("content-length") {
                    let v = std::str::from_utf8(h.value).expect("a served length is text").trim();
                    assert!(!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()), "served a length {v:?}");
                    let n: u64 = v.parse().expect("digits");
                    assert!(length.is_none_or(|l| l == n), "served two lengths that differ");
                    length = Some(n);
                }
                if h.name.eq_ignore_ascii_case("connection") {
                    close |= std::str::from_utf8(h.value)
                        .unwrap_or("")
                        .split(',')
                        .any(|t| t.trim().eq_ignore_ascii_case("close"));
                }
            }
            assert_eq!(body_len, length.unwrap_or(0), "body length differs from the header's");
            assert_eq!(keep_alive, !close, "keep-alive differs from Connection");
        }
        crate::server::FuzzVerdict::Partial => {
            assert!(
                !matches!(verdict, Ok(httparse::Status::Complete(_))) || bytes.is_empty(),
                "waited on a complete head"
            );
        }
        crate::server::FuzzVerdict::Elsewhere => {
            assert_eq!(&buf[..], bytes, "bytes handed to hyper were changed");
        }
    }
}
