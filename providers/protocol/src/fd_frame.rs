//! Frames that carry a file descriptor (`SCM_RIGHTS`) on a unix socket: how a coordinator hands
//! a pipe to a stream end so the stream's bytes bypass it.
//!
//! The descriptor rides on the frame's first bytes; the receiver reads the 4-byte length with
//! `recvmsg`, so it never consumes bytes of a later frame along with the descriptor.

use crate::frame::{FrameError, MAX_FRAME_LEN};
use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags,
};
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::UnixStream;

/// Writes `frame` (already encoded) with `fd` attached.
pub async fn write_frame_with_fd(socket: &mut UnixStream, frame: &[u8], fd: BorrowedFd<'_>) -> io::Result<()> {
    let sent = loop {
        socket.writable().await?;
        let attempt = socket.try_io(Interest::WRITABLE, || {
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            let fds = [fd];
            if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
                return Err(io::Error::other("no room for the descriptor"));
            }
            Ok(sendmsg(&*socket, &[IoSlice::new(frame)], &mut control, SendFlags::NOSIGNAL)?)
        });
        match attempt {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    };
    // The descriptor went with the first bytes; the rest is a plain write.
    socket.write_all(&frame[sent..]).await
}

/// Reads one frame into `buf` and any descriptor sent with it (close-on-exec). `Ok(None)` on a
/// clean end of stream before the frame.
pub async fn read_frame_with_fd(
    socket: &mut UnixStream,
    buf: &mut Vec<u8>,
) -> Result<Option<Option<OwnedFd>>, FrameError> {
    let mut header = [0u8; 4];
    let mut got = 0;
    let mut fd = None;
    while got < header.len() {
        socket.readable().await?;
        let attempt = socket.try_io(Interest::READABLE, || {
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let mut iov = [IoSliceMut::new(&mut header[got..])];
            let message = recvmsg(&*socket, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)?;
            for ancillary in control.drain() {
                if let RecvAncillaryMessage::ScmRights(fds) = ancillary {
                    // Extra descriptors are closed as the iterator drops them.
                    for received in fds {
                        fd.get_or_insert(received);
                    }
                }
            }
            Ok(message.bytes)
        });
        match attempt {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len, max: MAX_FRAME_LEN });
    }
    buf.clear();
    buf.resize(len, 0);
    match socket.read_exact(buf).await {
        Ok(_) => Ok(Some(fd)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(FrameError::Truncated),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::encode_into;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[tokio::test]
    async fn a_descriptor_travels_with_its_frame_and_the_next_frame_stays_whole() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let (pipe_read, pipe_write) = rustix::pipe::pipe().unwrap();
        let mut frames = Vec::new();
        encode_into(&mut frames, b"with a pipe").unwrap();
        let first_len = frames.len();
        encode_into(&mut frames, b"after").unwrap();
        write_frame_with_fd(&mut a, &frames[..first_len], pipe_write.as_fd()).await.unwrap();
        a.write_all(&frames[first_len..]).await.unwrap();
        drop(pipe_write);

        let mut buf = Vec::new();
        let fd = read_frame_with_fd(&mut b, &mut buf).await.unwrap().unwrap().expect("a descriptor");
        assert_eq!(buf, b"with a pipe");
        let mut second = Vec::new();
        assert!(crate::frame::read_frame(&mut b, &mut second, 64).await.unwrap());
        assert_eq!(second, b"after");

        let mut writer = std::fs::File::from(fd);
        writer.write_all(b"through the pipe").unwrap();
        drop(writer);
        let mut text = String::new();
        std::fs::File::from(pipe_read).read_to_string(&mut text).unwrap();
        assert_eq!(text, "through the pipe");

        drop(a);
        assert!(read_frame_with_fd(&mut b, &mut buf).await.unwrap().is_none(), "a clean end");
    }
}
