//! A request body that fails when its bytes stop coming: a progress timeout, not a cap on the
//! whole upload, so a long stream that keeps moving is never cut off.

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// Errors of a [`ProgressTimeout`] body: the inner body's, or [`BodyStalled`].
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// No bytes of the request body arrived for this long while the server was waiting for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no request body bytes arrived for {} s", .0.as_secs_f64())]
pub struct BodyStalled(pub Duration);

/// Whether `error` (or what caused it) is a request body that did not arrive in time: a
/// [`BodyStalled`] or an elapsed [`tokio::time::timeout`].
pub fn is_body_timeout(error: &(dyn StdError + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<BodyStalled>() || e.is::<tokio::time::error::Elapsed>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Wraps a body so that, whenever its reader waits for the next frame, the frame must come
/// within `idle`. Time the reader spends elsewhere (e.g. held back by a slow consumer) does not
/// count.
#[derive(Debug)]
pub struct ProgressTimeout<B> {
    inner: B,
    idle: Duration,
    /// Armed while the reader waits.
    deadline: Option<Pin<Box<Sleep>>>,
    stalled: bool,
}

impl<B> ProgressTimeout<B> {
    pub fn new(inner: B, idle: Duration) -> Self {
        Self { inner, idle, deadline: None, stalled: false }
    }
}

impl<B> Body for ProgressTimeout<B>
where
    B: Body + Unpin,
    B::Data: Buf,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let this = &mut *self;
        if this.stalled {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.deadline = None;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let idle = this.idle;
        let deadline = this.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + idle)));
        if deadline.as_mut().poll(cx).is_ready() {
            this.deadline = None;
            this.stalled = true;
            return Poll::Ready(Some(Err(Box::new(BodyStalled(idle)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.stalled || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use std::collections::VecDeque;
    use std::convert::Infallible;

    /// A body that yields each piece after its delay (measured from when it is asked for).
    struct Paced {
        pieces: VecDeque<(u64, &'static str)>,
        wait: Option<Pin<Box<Sleep>>>,
    }

    fn paced(pieces: Vec<(u64, &'static str)>) -> Paced {
        Paced { pieces: pieces.into(), wait: None }
    }

    impl Body for Paced {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            let Some(&(delay, text)) = self.pieces.front() else { return Poll::Ready(None) };
            let wait = self.wait.get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(delay))));
            if wait.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.wait = None;
            self.pieces.pop_front();
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(text.as_bytes())))))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_keeps_moving_is_never_cut_off() {
        // Ten pieces 300 ms apart: 3 s in all, never 1 s without progress.
        let body = ProgressTimeout::new(paced(vec![(300, "x"); 10]), Duration::from_secs(1));
        let bytes = body.collect().await.expect("complete").to_bytes();
        assert_eq!(bytes.len(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_with_body_stalled() {
        let body = ProgressTimeout::new(paced(vec![(10, "a"), (5_000, "b")]), Duration::from_secs(1));
        let error = body.collect().await.expect_err("stalled");
        assert!(is_body_timeout(&*error), "{error}");
        assert_eq!(error.to_string(), "no request body bytes arrived for 1 s");
    }

    #[tokio::test(start_paused = true)]
    async fn time_spent_not_reading_does_not_count() {
        let mut body = ProgressTimeout::new(paced(vec![(0, "a"), (500, "b")]), Duration::from_secs(1));
        body.frame().await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        body.frame().await.unwrap().expect("the reader was away, not the body");
    }

    #[test]
    fn timeouts_are_found_in_the_cause_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("wrapped")]
        struct Wrapper(#[source] BodyStalled);
        assert!(is_body_timeout(&Wrapper(BodyStalled(Duration::from_secs(1)))));
        assert!(!is_body_timeout(&std::io::Error::other("reset")));
    }
}
