//! The clamd scanner client against a real clamd (`ops/clamd.sh`, the project's signature
//! database, `StreamMaxLength` 1 MiB), over TCP and the unix socket.
//!
//! The EICAR string and the project marker are assembled at run time, so this source file does
//! not itself trip a virus scanner on a developer's machine.

use std::time::Duration;

use bytes::Bytes;
use cognomega_stores::clamd::{Clamd, ClamdAddr, ClamdTimeouts, ScanError, ScanVerdict};
use cognomega_testkit::clamd::{clamd, ClamdServer, STREAM_MAX};
use futures::stream::{self, Stream};

const EICAR_NAME: &str = "Cognomega.Test.EICAR.UNOFFICIAL";
const MARKER_NAME: &str = "Cognomega.Test.Marker.UNOFFICIAL";

fn eicar() -> Vec<u8> {
    let eicar = [
        &br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR"[..],
        b"-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*",
    ]
    .concat();
    assert_eq!(eicar.len(), 68);
    eicar
}

fn marker() -> Vec<u8> {
    ["COGNOMEGA-TEST-", "MALWARE-7f3a"].concat().into_bytes()
}

/// Prose that matches no signature, `len` bytes of it.
fn clean_text(len: usize) -> Vec<u8> {
    b"Queue-first: every write path is a producer paired with an idempotent consumer.\n"
        .iter()
        .copied()
        .cycle()
        .take(len)
        .collect()
}

/// The bytes as a stream of `piece`-byte items.
fn pieces(bytes: Vec<u8>, piece: usize) -> impl Stream<Item = Result<Bytes, std::io::Error>> {
    let bytes = Bytes::from(bytes);
    let items: Vec<_> = (0..bytes.len())
        .step_by(piece)
        .map(|at| Ok(bytes.slice(at..(at + piece).min(bytes.len()))))
        .collect();
    stream::iter(items)
}

fn whole(bytes: Vec<u8>) -> impl Stream<Item = Result<Bytes, std::io::Error>> {
    stream::iter([Ok(Bytes::from(bytes))])
}

fn tcp() -> Clamd {
    Clamd::new(clamd().tcp.clone())
}

fn unix() -> Clamd {
    Clamd::new(clamd().unix.clone())
}

fn infected(signature: &str) -> ScanVerdict {
    ScanVerdict::Infected {
        signature: signature.to_owned(),
    }
}

async fn verdict(client: &Clamd, bytes: Vec<u8>) -> ScanVerdict {
    client
        .scan_stream(whole(bytes))
        .await
        .unwrap_or_else(|e| panic!("scan over {}: {e}", client.addr()))
}

#[tokio::test]
async fn ping_answers_over_tcp_and_unix() {
    for client in [tcp(), unix()] {
        client
            .ping()
            .await
            .unwrap_or_else(|e| panic!("ping {}: {e}", client.addr()));
    }
    assert!(matches!(clamd().tcp, ClamdAddr::Tcp { .. }));
    assert!(matches!(clamd().unix, ClamdAddr::Unix(_)));
}

#[tokio::test]
async fn eicar_is_infected_under_its_unofficial_name_over_tcp_and_unix() {
    for client in [tcp(), unix()] {
        assert_eq!(verdict(&client, eicar()).await, infected(EICAR_NAME));
    }
}

#[tokio::test]
async fn eicar_with_a_trailing_newline_is_infected() {
    for ending in [&b"\n"[..], b"\r\n", b"\n\n\n"] {
        let file = [eicar(), ending.to_vec()].concat();
        assert_eq!(verdict(&tcp(), file).await, infected(EICAR_NAME));
    }
}

#[tokio::test]
async fn eicar_inside_a_larger_file_across_chunk_boundaries_is_infected() {
    // 4 KiB chunks, and the string starts 30 bytes before the end of the 10th one: clamd has to
    // match across the chunks it was sent.
    let chunk = 4096;
    let file = [clean_text(10 * chunk - 30), eicar(), clean_text(200 * 1024)].concat();
    let client = tcp().with_chunk_size(chunk);
    assert_eq!(verdict(&client, file).await, infected(EICAR_NAME));
}

#[tokio::test]
async fn the_project_test_signature_is_infected() {
    let file = [clean_text(1000), marker(), b"\n".to_vec(), clean_text(1000)].concat();
    for client in [tcp(), unix()] {
        assert_eq!(verdict(&client, file.clone()).await, infected(MARKER_NAME));
    }
}

#[tokio::test]
async fn clean_text_is_clean() {
    for client in [tcp(), unix()] {
        assert_eq!(
            verdict(&client, clean_text(300 * 1024)).await,
            ScanVerdict::Clean
        );
    }
}

#[tokio::test]
async fn a_clean_png_is_clean() {
    let image = image::RgbImage::from_fn(256, 256, |x, y| {
        image::Rgb([x as u8, y as u8, (x ^ y) as u8])
    });
    let mut png = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut png, image::ImageFormat::Png)
        .expect("encoding the PNG");
    let png = png.into_inner();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
    assert_eq!(verdict(&tcp(), png).await, ScanVerdict::Clean);
}

#[tokio::test]
async fn an_empty_stream_is_clean() {
    assert_eq!(verdict(&tcp(), Vec::new()).await, ScanVerdict::Clean);
}

#[tokio::test]
async fn a_stream_past_stream_max_length_is_a_daemon_error_never_clean() {
    // 2 MiB fits in the socket buffers, so clamd's refusal arrives after the whole stream was
    // sent; at 32 MiB clamd closes the connection under our writes, and its reply must still
    // be what we report.
    for (client, len) in [
        (tcp(), 2 * STREAM_MAX),
        (unix(), 2 * STREAM_MAX),
        (tcp(), 32 * STREAM_MAX),
        (unix(), 32 * STREAM_MAX),
    ] {
        let result = client.scan_stream(pieces(clean_text(len), 64 * 1024)).await;
        match result {
            Err(ScanError::Daemon(message)) => {
                assert!(
                    message.contains("size limit exceeded"),
                    "{len} bytes over {}: {message}",
                    client.addr()
                );
            }
            other => panic!(
                "{len} bytes over {}: expected a daemon error, got {other:?}",
                client.addr()
            ),
        }
    }
    // Just under the limit is still scanned, so the limit is clamd's, not ours.
    let just_under = [clean_text(STREAM_MAX - 200), eicar()].concat();
    assert_eq!(verdict(&tcp(), just_under).await, infected(EICAR_NAME));
}

#[tokio::test]
async fn a_stream_of_many_small_pieces_is_scanned() {
    // 3-byte items, regrouped into the default chunk size.
    let file = [clean_text(100 * 1024), eicar(), clean_text(100 * 1024)].concat();
    let verdict = tcp().scan_stream(pieces(file, 3)).await.expect("scan");
    assert_eq!(verdict, infected(EICAR_NAME));

    // And sent as they come: one INSTREAM chunk per byte.
    let file = [clean_text(500), eicar(), clean_text(500)].concat();
    let client = unix().with_chunk_size(1);
    let verdict = client.scan_stream(pieces(file, 1)).await.expect("scan");
    assert_eq!(verdict, infected(EICAR_NAME));

    let verdict = client
        .scan_stream(pieces(clean_text(2000), 7))
        .await
        .expect("scan");
    assert_eq!(verdict, ScanVerdict::Clean);
}

#[tokio::test]
async fn a_failing_source_is_a_source_error_never_clean() {
    let items = vec![
        Ok(Bytes::from(clean_text(1000))),
        Err(std::io::Error::other("the upload vanished")),
        Ok(Bytes::from(clean_text(1000))),
    ];
    match tcp().scan_stream(stream::iter(items)).await {
        Err(e @ ScanError::Source(_)) => {
            assert!(e.to_string().contains("the upload vanished"), "{e}");
            assert!(!e.is_retryable());
        }
        other => panic!("expected a source error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_stopped_clamd_is_unavailable_over_tcp_and_unix() {
    let server = ClamdServer::start("1M").unwrap_or_else(|e| panic!("{e}"));
    let clients = [
        Clamd::new(server.tcp.clone()),
        Clamd::new(server.unix.clone()),
    ];
    for client in &clients {
        client.ping().await.expect("ping before the stop");
    }
    server.stop();
    for client in &clients {
        let ping = client.ping().await;
        assert!(
            matches!(&ping, Err(ScanError::Unavailable(_))),
            "ping {}: {ping:?}",
            client.addr()
        );
        let scan = client.scan_stream(whole(eicar())).await;
        match scan {
            Err(e @ ScanError::Unavailable(_)) => assert!(e.is_retryable()),
            other => panic!(
                "scan {}: expected Unavailable, got {other:?}",
                client.addr()
            ),
        }
    }
}

#[tokio::test]
async fn a_silent_daemon_times_out_as_unavailable() {
    // A listener that accepts and never answers: a clamd wedged mid-scan, as far as a client
    // can tell.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    let addr = ClamdAddr::parse(&format!("tcp://127.0.0.1:{port}")).expect("addr");
    let client = Clamd::new(addr).with_timeouts(ClamdTimeouts {
        connect: Duration::from_secs(2),
        write: Duration::from_secs(2),
        reply: Duration::from_millis(300),
    });
    let ping = client.ping().await;
    assert!(
        matches!(&ping, Err(ScanError::Unavailable(m)) if m.contains("no reply")),
        "{ping:?}"
    );
    let scan = client.scan_stream(whole(clean_text(1000))).await;
    assert!(
        matches!(&scan, Err(ScanError::Unavailable(m)) if m.contains("no reply")),
        "{scan:?}"
    );
    hold.abort();
}
