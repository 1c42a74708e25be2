//! Framing tests of the edge's HTTP/1.1 client against machines that answer byte by byte.

use super::*;
use http_body_util::BodyExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::AsyncWriteExt;

/// A machine that answers every request with the next of `answers`, written in pieces of
/// `piece` bytes, and closes the connection after each answer when `close_after` is set.
/// Returns its address and a count of connections accepted.
async fn scripted(answers: Vec<&'static [u8]>, piece: usize, close_after: bool) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let answers = Arc::new(std::sync::Mutex::new(answers.into_iter()));
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let answers = answers.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                loop {
                    // Requests here have no body: the head is the request.
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut chunk = [0u8; 1024];
                        match socket.read(&mut chunk).await {
                            Ok(n) if n > 0 => seen.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                    }
                    seen.clear();
                    let Some(answer) = answers.lock().unwrap().next() else { return };
                    for part in answer.chunks(piece) {
                        if socket.write_all(part).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    if close_after {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

async fn get(addr: &str) -> Result<(http::response::Parts, Bytes), SendError> {
    let wire = request(&Method::GET, "/", &HeaderValue::from_static("m"), std::iter::empty(), &Bytes::new());
    let response = send(
        addr,
        &wire,
        &Method::GET,
        Duration::from_secs(1),
        Duration::from_secs(5),
        None,
        tokio::time::Instant::now(),
    )
    .await?;
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.map_err(|e| SendError::Sent(e.to_string()))?.to_bytes();
    Ok((parts, bytes))
}

#[tokio::test]
async fn bodies_of_every_framing_arrive_whole_and_connections_are_reused() {
    let (addr, accepted) = scripted(
        vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\nx-a: 1\r\n\r\nhello world",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
        ],
        3,
        false,
    )
    .await;
    let (parts, body) = get(&addr).await.unwrap();
    assert_eq!(parts.status, 200);
    assert_eq!(parts.headers["x-a"], "1");
    assert_eq!(&body[..], b"hello world");
    let (parts, body) = get(&addr).await.unwrap();
    assert_eq!(parts.status, 201, "the interim 100 is skipped");
    assert_eq!(&body[..], b"hello world");
    let (parts, body) = get(&addr).await.unwrap();
    assert_eq!((parts.status.as_u16(), body.len()), (204, 0));
    let (parts, body) = get(&addr).await.unwrap();
    assert_eq!((parts.status.as_u16(), body.len()), (200, 0));
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "four answers read to their end share one connection"
    );
}

#[tokio::test]
async fn a_body_ending_with_the_connection_is_read_to_the_close() {
    let (addr, accepted) = scripted(
        vec![
            b"HTTP/1.1 200 OK\r\n\r\nuntil close",
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
        ],
        4,
        true,
    )
    .await;
    assert_eq!(&get(&addr).await.unwrap().1[..], b"until close");
    assert_eq!(&get(&addr).await.unwrap().1[..], b"ok");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_machine_that_closes_right_after_answering_costs_no_failed_request() {
    // No `connection: close`: the edge pools the connection, finds it closed, and either
    // skips it or (closed just as the request went out) sends again on a new one.
    let (addr, accepted) = scripted(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na"; 4], 64, true).await;
    for _ in 0..4 {
        assert_eq!(&get(&addr).await.unwrap().1[..], b"a");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn broken_answers_are_errors_that_say_what_broke() {
    let (addr, _) = scripted(
        vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
            b"garbage\r\n\r\n",
        ],
        64,
        true,
    )
    .await;
    let cut = get(&addr).await.err().unwrap();
    assert!(format!("{cut:?}").contains("before the body's end"), "{cut:?}");
    let bad_chunk = get(&addr).await.err().unwrap();
    assert!(format!("{bad_chunk:?}").contains("chunk size"), "{bad_chunk:?}");
    let bad_length = get(&addr).await.err().unwrap();
    assert!(format!("{bad_length:?}").contains("content-length"), "{bad_length:?}");
    let garbage = get(&addr).await.err().unwrap();
    assert!(format!("{garbage:?}").contains("malformed response head"), "{garbage:?}");
}

#[tokio::test]
async fn a_machine_that_is_not_listening_is_a_connect_error() {
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    assert!(matches!(get(&addr).await, Err(SendError::Connect(_))));
}

#[test]
fn requests_carry_the_machines_host_and_the_body_length() {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    let host = HeaderValue::from_static("m:1");
    let wire = request(&Method::POST, "/v1/x?y=1", &host, headers.iter(), &Bytes::from_static(b"{\"a\":1}"));
    assert_eq!(
        String::from_utf8(wire.bytes).unwrap(),
        "POST /v1/x?y=1 HTTP/1.1\r\nhost: m:1\r\ncontent-type: application/json\r\ncontent-length: 7\r\n\r\n{\"a\":1}"
    );
    assert!(wire.body.is_none(), "a small body goes in the same buffer");
    let big = Bytes::from(vec![b'x'; COPY_BODY + 1]);
    let wire = request(&Method::POST, "/", &host, std::iter::empty(), &big);
    assert!(String::from_utf8(wire.bytes)
        .unwrap()
        .ends_with(&format!("content-length: {}\r\n\r\n", COPY_BODY + 1)));
    assert_eq!(wire.body.unwrap().len(), COPY_BODY + 1);
}

#[test]
fn hop_by_hop_headers_and_those_connection_names_are_left_out_of_the_answer() {
    let raw = "HTTP/1.1 200 OK\r\nx-session: abc\r\nconnection: close, x-session, keep-alive\r\nkeep-alive: timeout=5\r\n\
               transfer-encoding: chunked\r\ncontent-type: text/plain\r\nte: trailers\r\n\r\n";
    let mut buf = BytesMut::from(raw.as_bytes());
    let (parts, framing, reusable) = parse_head(&mut buf, &Method::GET).ok().unwrap().unwrap();
    let left: Vec<&str> = parts.headers.keys().map(HeaderName::as_str).collect();
    assert_eq!(left, vec!["content-type"]);
    // What they said about the connection and the body was still read.
    assert_eq!(framing, Framing::Chunked(Chunk::Size));
    assert!(!reusable, "the machine asked to close");
    assert!(buf.is_empty());
}
