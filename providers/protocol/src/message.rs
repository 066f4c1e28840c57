//! The messages exchanged with a coordinator.
//!
//! On a unix socket the first frame a peer sends says what it is: a client
//! ([`ToCoordinator::ClientHello`]), a provider ([`ToCoordinator::ProviderHello`]) or one end of a
//! byte stream ([`ToCoordinator::StreamOpen`]). Clients and providers then send requests; the
//! coordinator acknowledges each at once ([`FromCoordinator::Ack`]) and later delivers its
//! [`Response`] on the same connection. Providers receive routed requests and answer them.

use crate::error::TaskError;
use crate::names::{NodeUrl, ProviderName, RequestId, StreamId, TaskName};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Priority a provider gets when it names none; lower numbers are tried first.
pub const DEFAULT_PRIORITY: u16 = 50;

/// A request to run one task.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub id: RequestId,
    pub task: TaskName,
    /// The task's arguments, kept as raw JSON so the coordinator routes them without re-encoding.
    #[serde(default = "empty_args")]
    pub args: Box<RawValue>,
    /// How long the caller will wait for the result; the coordinator's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Run the task on another node: the base URL of that node's coordinator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeUrl>,
    /// A byte stream the task consumes (e.g. `zfs-receive`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamHandle>,
    /// Deliver the response to this HTTP(S) URL (POST) instead of on the caller's connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// The request this one is a sub-task of, for the journal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<RequestId>,
}

pub(crate) fn empty_args() -> Box<RawValue> {
    RawValue::from_string("{}".to_owned()).expect("literal JSON")
}

impl Request {
    /// A request for `task` with already-encoded arguments and a fresh id.
    pub fn new(task: TaskName, args: Box<RawValue>) -> Self {
        Self {
            id: RequestId::random(),
            task,
            args,
            timeout_ms: None,
            node: None,
            stream: None,
            reply_to: None,
            parent: None,
        }
    }

    /// A request for a typed task.
    pub fn for_task<T: crate::Task>(args: &T::Args) -> Result<Self, serde_json::Error> {
        let raw = serde_json::value::to_raw_value(args)?;
        Ok(Self::new(T::name(), raw))
    }
}

/// The outcome of a request: its result, or why it failed; plus an optional output stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "ResponseWire", into = "ResponseWire")]
pub struct Response {
    pub id: RequestId,
    pub outcome: Result<Box<RawValue>, TaskError>,
    /// A byte stream the task produced (e.g. `zfs-send`), to be read from the coordinator.
    pub stream: Option<StreamHandle>,
}

impl Response {
    pub fn ok(id: RequestId, result: Box<RawValue>) -> Self {
        Self { id, outcome: Ok(result), stream: None }
    }
    pub fn err(id: RequestId, error: TaskError) -> Self {
        Self { id, outcome: Err(error), stream: None }
    }
    pub fn error(&self) -> Option<&TaskError> {
        self.outcome.as_ref().err()
    }
    /// Decodes the result as `T`, turning a malformed result into an `internal` error.
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, TaskError> {
        match &self.outcome {
            Ok(raw) => serde_json::from_str(raw.get())
                .map_err(|e| TaskError::new(crate::ErrorCode::Internal, format!("malformed task result: {e}"))),
            Err(e) => Err(e.clone()),
        }
    }
}

/// On the wire a response has exactly one of `result` and `error`. A response is received back,
/// so fields a newer version adds are ignored.
#[derive(Serialize, Deserialize)]
struct ResponseWire {
    id: RequestId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<TaskError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stream: Option<StreamHandle>,
}

impl TryFrom<ResponseWire> for Response {
    type Error = String;
    fn try_from(wire: ResponseWire) -> Result<Self, String> {
        let outcome = match (wire.result, wire.error) {
            (Some(result), None) => Ok(result),
            (None, Some(error)) => Err(error),
            (Some(_), Some(_)) => return Err("a response has both a result and an error".into()),
            (None, None) => return Err("a response has neither a result nor an error".into()),
        };
        Ok(Self { id: wire.id, outcome, stream: wire.stream })
    }
}

impl From<Response> for ResponseWire {
    fn from(r: Response) -> Self {
        let (result, error) = match r.outcome {
            Ok(v) => (Some(v), None),
            Err(e) => (None, Some(e)),
        };
        Self { id: r.id, result, error, stream: r.stream }
    }
}

/// A byte stream brokered by a coordinator: its id and, when it lives on another node, that
/// node's coordinator URL. Strict although a [`Response`] carries one back too: it is part of a
/// [`Request`] a coordinator accepts, and an unknown field could change which bytes it names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamHandle {
    pub id: StreamId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeUrl>,
}

impl StreamHandle {
    pub fn local(id: StreamId) -> Self {
        Self { id, node: None }
    }
}

/// Which end of a stream a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamDirection {
    /// This connection writes the stream's bytes.
    Put,
    /// This connection reads the stream's bytes.
    Get,
}

/// One task a provider serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRegistration {
    pub task: TaskName,
    /// Overrides the provider's priority for this task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u16>,
}

/// What a provider says when it connects: who it is and which tasks it serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderHello {
    pub name: ProviderName,
    pub version: String,
    pub protocol: u32,
    /// Lower is tried first when several providers serve a task.
    #[serde(default = "default_priority")]
    pub priority: u16,
    pub tasks: Vec<TaskRegistration>,
}

fn default_priority() -> u16 {
    DEFAULT_PRIORITY
}

/// Messages sent to a coordinator on its unix socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ToCoordinator {
    ClientHello {
        name: String,
        protocol: u32,
    },
    ProviderHello(ProviderHello),
    /// Turns this connection into one end of a byte stream. With `accept_pipe` the coordinator
    /// may answer [`FromCoordinator::StreamPipe`] and hand over a pipe instead of carrying the
    /// bytes itself.
    StreamOpen {
        stream: StreamHandle,
        direction: StreamDirection,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        accept_pipe: bool,
    },
    /// On a pipe stream's producer end, after the pipe's write end is closed: how the stream
    /// ended (a pipe's end of file alone cannot tell a finished stream from a dead producer).
    StreamEnd {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<TaskError>,
    },
    Request(Request),
    /// A provider's answer to a request routed to it.
    Response(Response),
    /// The caller gives up on a request.
    Cancel {
        id: RequestId,
    },
}

/// The coordinator's answer to a hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub coordinator: String,
    pub version: String,
    pub protocol: u32,
}

/// Messages a coordinator sends on its unix socket. What clients and providers receive back:
/// fields a newer coordinator adds are ignored (a routed [`Request`] itself stays strict).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FromCoordinator {
    Welcome(Welcome),
    /// The hello was refused; the connection closes after this.
    Refused(TaskError),
    /// The request was accepted and is being routed.
    Ack {
        id: RequestId,
    },
    /// A request's final outcome.
    Response(Response),
    /// A request routed to this provider.
    Request(Request),
    /// The coordinator no longer wants the result of this request (timeout or cancel).
    Cancel {
        id: RequestId,
    },
    /// The welcome of a stream end opened with `accept_pipe` that gets a pipe: the pipe's file
    /// descriptor travels with this frame (`SCM_RIGHTS`) and the bytes no longer pass through
    /// the coordinator.
    StreamPipe(Welcome),
    /// On a pipe stream's consumer end: how the producer said the stream ended. No error means
    /// the bytes read before end of file are the whole stream.
    StreamEnd {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<TaskError>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    #[test]
    fn requests_keep_raw_args_and_reject_unknown_fields() {
        let text =
            r#"{"request":{"id":"67e55044-10b1-426f-9247-bb680e5fe0c8","task":"node-info","args":{"x": [1,2]}}}"#;
        let msg: ToCoordinator = serde_json::from_str(text).unwrap();
        let ToCoordinator::Request(req) = msg else { panic!("not a request") };
        assert_eq!(req.args.get(), r#"{"x": [1,2]}"#);
        assert_eq!(req.task.as_str(), "node-info");

        let bad = r#"{"request":{"id":"67e55044-10b1-426f-9247-bb680e5fe0c8","task":"node-info","bogus":1}}"#;
        let err = serde_json::from_str::<ToCoordinator>(bad).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn args_default_to_an_empty_object() {
        let text = r#"{"id":"67e55044-10b1-426f-9247-bb680e5fe0c8","task":"node-info"}"#;
        let req: Request = serde_json::from_str(text).unwrap();
        assert_eq!(req.args.get(), "{}");
    }

    #[test]
    fn responses_have_exactly_one_outcome() {
        let id = RequestId::random();
        let ok = Response::ok(id, RawValue::from_string("[1]".into()).unwrap());
        let text = serde_json::to_string(&FromCoordinator::Response(ok)).unwrap();
        assert!(text.contains(r#""result":[1]"#), "{text}");
        let back: FromCoordinator = serde_json::from_str(&text).unwrap();
        let FromCoordinator::Response(back) = back else { panic!() };
        assert_eq!(back.decode::<Vec<u32>>().unwrap(), vec![1]);

        let err = Response::err(id, TaskError::new(ErrorCode::Timeout, "late"));
        let text = serde_json::to_string(&err).unwrap();
        assert!(text.contains(r#""code":"timeout""#), "{text}");

        let both = format!(r#"{{"id":"{id}","result":1,"error":{{"code":"failed","message":"x"}}}}"#);
        assert!(serde_json::from_str::<Response>(&both).is_err());
        let neither = format!(r#"{{"id":"{id}"}}"#);
        assert!(serde_json::from_str::<Response>(&neither).is_err());
    }

    #[test]
    fn stream_open_asks_for_a_pipe_only_when_it_says_so() {
        let handle = StreamHandle::local(StreamId::random());
        let plain =
            ToCoordinator::StreamOpen { stream: handle.clone(), direction: StreamDirection::Get, accept_pipe: false };
        let text = serde_json::to_string(&plain).unwrap();
        assert!(!text.contains("accept_pipe"), "older coordinators keep understanding it: {text}");
        let piped = ToCoordinator::StreamOpen { stream: handle, direction: StreamDirection::Put, accept_pipe: true };
        let text = serde_json::to_string(&piped).unwrap();
        let ToCoordinator::StreamOpen { accept_pipe, .. } = serde_json::from_str(&text).unwrap() else { panic!() };
        assert!(accept_pipe);
        let end: FromCoordinator = serde_json::from_str(r#"{"stream_end":{}}"#).unwrap();
        assert!(matches!(end, FromCoordinator::StreamEnd { error: None }));
    }

    #[test]
    fn provider_hello_defaults_priority() {
        let text = r#"{"provider_hello":{"name":"zfs","version":"0.1.0","protocol":1,"tasks":[{"task":"zfs-get"}]}}"#;
        let ToCoordinator::ProviderHello(hello) = serde_json::from_str(text).unwrap() else { panic!() };
        assert_eq!(hello.priority, DEFAULT_PRIORITY);
    }
}
