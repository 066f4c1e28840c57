//! Any byte stream on the coordinator's unix socket, as the coordinator reads it: frames up to
//! the limit, each decoded as a message. Nothing panics; a frame over the limit is refused by
//! its length alone; a message that decodes encodes back to one that decodes the same.
#![no_main]

use cerana_protocol::frame::{read_frame, FrameError};
use cerana_protocol::ToCoordinator;
use libfuzzer_sys::fuzz_target;

/// Small, so the fuzzer reaches the limit's edge.
const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        let mut reader = data;
        let mut buf = Vec::new();
        // Each frame consumes at least its 4-byte header: bounded by the input's length.
        loop {
            match read_frame(&mut reader, &mut buf, MAX).await {
                Ok(true) => {
                    assert!(buf.len() <= MAX);
                    if let Ok(message) = serde_json::from_slice::<ToCoordinator>(&buf) {
                        let again = serde_json::to_vec(&message).expect("a decoded message encodes");
                        let back: ToCoordinator = serde_json::from_slice(&again).expect("and decodes again");
                        assert_eq!(serde_json::to_vec(&back).unwrap(), again, "round trip changed the message");
                    }
                }
                Ok(false) => break,
                Err(FrameError::TooLarge { len, max }) => {
                    assert!(len > max && max == MAX);
                    break;
                }
                Err(FrameError::Truncated) => break,
                Err(e) => panic!("reading from memory: {e}"),
            }
        }
    });
});
