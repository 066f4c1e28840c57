//! Pipe streams end to end: the coordinator hands a kernel pipe to stream ends that accept one
//! (the bytes then bypass it) and joins a pipe end to a chunk end with a pump; either way the
//! consumer learns from the producer's verdict whether it read the whole stream.

mod common;

use cerana_client::{open_stream, InputEnd, OutputEnd};
use cerana_protocol::stream::{ChunkReader, ChunkWriter, StreamError};
use cerana_protocol::{ErrorCode, Request, StreamDirection, StreamHandle, StreamId, TaskError};
use cerana_provider_sdk::Provider;
use common::*;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;

mod test_tasks {
    use super::*;

    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct PipeSourceArgs {
        pub bytes: u64,
        /// Say the stream failed after writing it.
        pub fail: bool,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct PipeSummary {
        pub bytes: u64,
        pub hash: u64,
        /// The end was a pipe (not chunk frames through the coordinator).
        pub piped: bool,
    }

    cerana_protocol::declare_tasks! {
        TestPipeSource = "test-pipe-source", Write, "Writes its output stream through a pipe when it can", PipeSourceArgs => PipeSummary;
        TestPipeSink = "test-pipe-sink", Write, "Reads its input stream through a pipe when it can", cerana_protocol::NoArgs => PipeSummary;
    }
}
use test_tasks::*;

fn stream_failure(e: impl std::fmt::Display) -> TaskError {
    TaskError::new(ErrorCode::StreamError, e.to_string())
}

fn source_data(bytes: u64) -> Vec<Vec<u8>> {
    let chunk = 256 * 1024;
    let mut left = bytes as usize;
    let mut out = Vec::new();
    for i in 0.. {
        if left == 0 {
            break;
        }
        let mut piece = pattern_chunk(i, chunk);
        piece.truncate(left.min(chunk));
        left -= piece.len();
        out.push(piece);
    }
    out
}

fn summary(hasher: &StreamHasher, piped: bool) -> PipeSummary {
    PipeSummary { bytes: hasher.bytes, hash: hasher.hash, piped }
}

/// Reads a pipe to its end on a blocking thread, as a child process would.
async fn drain_pipe(pipe: OwnedFd) -> std::io::Result<StreamHasher> {
    tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::from(pipe);
        let mut hasher = StreamHasher::default();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match file.read(&mut buf)? {
                0 => return Ok(hasher),
                n => hasher.update(&buf[..n]),
            }
        }
    })
    .await
    .expect("reader thread")
}

fn pipe_provider() -> Provider {
    Provider::new("piper", "test")
        .task::<TestPipeSource, _, _>(|ctx, args: PipeSourceArgs| async move {
            let data = source_data(args.bytes);
            let mut hasher = StreamHasher::default();
            data.iter().for_each(|piece| hasher.update(piece));
            let piped = match ctx.output().await? {
                OutputEnd::Pipe { pipe, finish } => {
                    tokio::spawn(async move {
                        let written = tokio::task::spawn_blocking(move || {
                            let mut file = std::fs::File::from(pipe);
                            data.iter().try_for_each(|piece| file.write_all(piece))
                        })
                        .await
                        .expect("writer thread");
                        let outcome = match (written, args.fail) {
                            (Ok(()), false) => Ok(()),
                            (Ok(()), true) => Err(TaskError::new(ErrorCode::Failed, "the source broke down")),
                            (Err(e), _) => Err(stream_failure(e)),
                        };
                        let _ = finish.finish(outcome).await;
                    });
                    true
                }
                OutputEnd::Chunks(mut writer) => {
                    tokio::spawn(async move {
                        for piece in data {
                            if writer.write_chunk(&piece).await.is_err() {
                                return;
                            }
                        }
                        if !args.fail {
                            let _ = writer.finish().await;
                        }
                    });
                    false
                }
            };
            Ok(summary(&hasher, piped))
        })
        .task::<TestPipeSink, _, _>(|ctx, _args: cerana_protocol::NoArgs| async move {
            match ctx.input().await? {
                InputEnd::Pipe { pipe, verdict } => {
                    let hasher = drain_pipe(pipe).await.map_err(stream_failure)?;
                    verdict.wait().await.map_err(stream_failure)?;
                    Ok(summary(&hasher, true))
                }
                InputEnd::Chunks(mut reader) => {
                    let mut hasher = StreamHasher::default();
                    while let Some(chunk) = reader.next_chunk().await.map_err(stream_failure)? {
                        hasher.update(chunk);
                    }
                    Ok(summary(&hasher, false))
                }
            }
        })
}

async fn setup() -> (TestDir, std::path::PathBuf, cerana_coordinator::Coordinator, cerana_client::UnixClient) {
    let dir = TestDir::new();
    let socket = dir.socket("c");
    let mut cfg = config(&socket);
    cfg.listen = Some("127.0.0.1:0".parse().unwrap());
    let coordinator = start(cfg).await;
    let _provider = spawn_provider(pipe_provider(), &socket);
    let client = client(&socket).await;
    wait_for_provider(&client, "piper", 1).await;
    (dir, socket, coordinator, client)
}

async fn source(client: &cerana_client::UnixClient, bytes: u64, fail: bool) -> (PipeSummary, StreamHandle) {
    let response =
        client.call(Request::for_task::<TestPipeSource>(&PipeSourceArgs { bytes, fail }).unwrap()).await.unwrap();
    (response.decode().unwrap(), response.stream.clone().expect("an output stream"))
}

async fn sink(client: &cerana_client::UnixClient, stream: StreamHandle) -> Result<PipeSummary, TaskError> {
    let mut request = Request::for_task::<TestPipeSink>(&cerana_protocol::NoArgs {}).unwrap();
    request.stream = Some(stream);
    client.call(request).await.unwrap().decode()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pipe_ends_stream_process_to_process_and_hear_the_verdict() {
    let (_dir, _socket, _coordinator, client) = setup().await;
    let (sent, handle) = source(&client, 48 << 20, false).await;
    let received = sink(&client, handle).await.unwrap();
    assert!(sent.piped && received.piped, "both ends take the pipe: {sent:?} {received:?}");
    assert_eq!((received.bytes, received.hash), (sent.bytes, sent.hash));

    // Every byte arrives, but the producer says it failed: the consumer must not trust it.
    let (_, handle) = source(&client, 1 << 20, true).await;
    let error = sink(&client, handle).await.unwrap_err();
    assert_eq!(error.code, ErrorCode::StreamError);
    assert!(error.message.contains("the source broke down"), "{error}");
}

#[tokio::test]
async fn a_chunk_reader_of_a_pipe_stream_gets_the_end_marker_only_when_it_succeeded() {
    let (_dir, socket, _coordinator, client) = setup().await;
    let (sent, handle) = source(&client, 3 << 20, false).await;
    let mut reader = ChunkReader::new(open_stream(&socket, handle, StreamDirection::Get).await.unwrap());
    let mut hasher = StreamHasher::default();
    while let Some(chunk) = reader.next_chunk().await.unwrap() {
        hasher.update(chunk);
    }
    assert_eq!(summary(&hasher, true), sent);

    let (_, handle) = source(&client, 1 << 20, true).await;
    let mut reader = ChunkReader::new(open_stream(&socket, handle, StreamDirection::Get).await.unwrap());
    let outcome = reader.copy_to(&mut Vec::new()).await;
    assert!(matches!(outcome, Err(StreamError::PeerVanished)), "{outcome:?}");
}

#[tokio::test]
async fn a_pipe_reader_of_a_chunk_stream_tells_complete_from_truncated() {
    let (_dir, socket, coordinator, client) = setup().await;
    for finish in [true, false] {
        let id = StreamId::random();
        let received = tokio::spawn({
            let client = client.clone();
            async move { sink(&client, StreamHandle::local(id)).await }
        });
        // The sink's end first, so it gets a pipe and the coordinator pumps the chunks into it.
        for _ in 0..500 {
            if coordinator.core().streams.waiting() == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let mut writer =
            ChunkWriter::new(open_stream(&socket, StreamHandle::local(id), StreamDirection::Put).await.unwrap());
        let mut hasher = StreamHasher::default();
        for piece in source_data(2 << 20) {
            hasher.update(&piece);
            writer.write_chunk(&piece).await.unwrap();
        }
        if finish {
            writer.finish().await.unwrap();
        } else {
            drop(writer);
        }
        match received.await.unwrap() {
            Ok(got) => {
                assert!(finish, "a truncated stream was taken as whole: {got:?}");
                assert_eq!(got, summary(&hasher, true));
            }
            Err(e) => {
                assert!(!finish, "a complete stream failed: {e}");
                assert_eq!(e.code, ErrorCode::StreamError);
                assert!(e.message.contains("vanished"), "{e}");
            }
        }
    }
}

#[tokio::test]
async fn a_pipe_stream_read_over_http_aborts_unless_its_producer_succeeded() {
    use http_body_util::BodyExt;
    let (_dir, _socket, coordinator, client) = setup().await;
    let url = cerana_protocol::NodeUrl::new(format!("http://{}", coordinator.http_addr().unwrap())).unwrap();
    let http = cerana_client::HttpClient::new(url, None, None).unwrap();

    let (sent, handle) = source(&client, 3 << 20, false).await;
    let body = http.stream_get(handle.id).await.unwrap().collect().await.unwrap().to_bytes();
    let mut hasher = StreamHasher::default();
    hasher.update(&body);
    assert_eq!(summary(&hasher, true), sent);

    let (_, handle) = source(&client, 1 << 20, true).await;
    let body = http.stream_get(handle.id).await.unwrap().collect().await;
    assert!(body.is_err(), "a stream whose producer failed must not read as complete");
}
