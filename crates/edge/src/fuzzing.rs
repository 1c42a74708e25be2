//! Entry points for fuzzing the edge's own HTTP/1.1 parsers, of clients' requests and of
//! machines' answers, against httparse, the parser they build on, and RFC 9112's framing rules
//! (`fuzz/` and the corpus regression test in `crates/fuzzcheck`). Not an API.

use bytes::BytesMut;

/// Parses `bytes` as a machine's answer to a GET (or a HEAD, `head`), as the edge's upstream
/// client does, and panics where it disagrees with httparse and RFC 9112's framing rules: the
/// same status, 1xx answers skipped, a body framed by the last Transfer-Encoding (chunked last:
/// chunked; another coding: until close), else by a Content-Length of digits only whose copies
/// agree, else until close; none for a HEAD, 204 or 304.
pub fn response(bytes: &[u8], head: bool) {
    let ours = crate::upstream::parse_head_for_fuzzing(bytes, head);
    let mut at = 0;
    loop {
        let mut lines = [httparse::EMPTY_HEADER; 64];
        let mut reference = httparse::Response::new(&mut lines);
        let len = match reference.parse(&bytes[at..]) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => {
                assert!(matches!(ours, Ok(None)), "answered a head httparse has not finished: {ours:?}");
                return;
            }
            Err(_) => {
                assert!(ours.is_err(), "took a head httparse refuses: {ours:?}");
                return;
            }
        };
        let code = reference.code.unwrap_or(0);
        if (100..200).contains(&code) && code != 101 {
            at += len;
            continue;
        }
        let Ok(Some((status, framing, _reusable, took))) = ours else {
            // Refusing what httparse reads is allowed (a bad status, value or length).
            return;
        };
        assert_eq!(status, code, "status differs");
        assert_eq!(took, at + len, "head length differs");
        let mut coding = None;
        let mut lengths = Vec::new();
        for h in reference.headers.iter() {
            let value = std::str::from_utf8(h.value).unwrap_or("");
            if h.name.eq_ignore_ascii_case("transfer-encoding") {
                coding = Some(value.rsplit(',').next().is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked")));
            } else if h.name.eq_ignore_ascii_case("content-length") {
                let v = value.trim();
                assert!(!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()), "took a length {v:?}");
                lengths.push(v.parse::<u64>().expect("digits"));
            }
        }
        let expected = if head || code == 204 || code == 304 {
            crate::upstream::FuzzFraming::Length(0)
        } else {
            match (coding, lengths.first()) {
                (Some(true), _) => crate::upstream::FuzzFraming::Chunked,
                (None, Some(&n)) => {
                    assert!(lengths.iter().all(|&l| l == n), "took lengths that differ");
                    crate::upstream::FuzzFraming::Length(n)
                }
                _ => crate::upstream::FuzzFraming::UntilClose,
            }
        };
        assert_eq!(framing, expected, "framing differs");
        return;
    }
}

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
                    // Read on its own, not with the code under test: items of a list are
                    // separated by commas, with spaces and tabs around them.
                    close |= h
                        .value
                        .split(|&b| b == b',')
                        .any(|item| item.trim_ascii().eq_ignore_ascii_case(b"close"));
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
