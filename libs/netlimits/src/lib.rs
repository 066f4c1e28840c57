//! Limits for the CeranaOS daemons' listeners (issue #15): every connection a peer can hold
//! is counted against a total cap and a cap per source address ([`Admission`], with permits
//! that give their slot back when dropped), the caps are fitted below the process's descriptor
//! limit ([`DescriptorBudget`]), connections over them are answered at once and closed
//! ([`accept_admitted`]), and a request body whose bytes stop coming fails
//! ([`ProgressTimeout`]). The coordinator and the bootserver share it; see `README.md`.

pub mod admission;
pub mod body;
pub mod descriptors;
pub mod listener;

pub use admission::{Admission, ConnectionLimits, Permit, Refused};
pub use body::{is_body_timeout, BodyStalled, ProgressTimeout};
pub use descriptors::DescriptorBudget;
pub use listener::{accept_admitted, busy_http_response, refuse_now};
