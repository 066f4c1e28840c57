//! CeranaOS PID 1.
//!
//! Init brings a bare kernel to a running node (mounts, settings from the kernel command line,
//! modules, identity) and then supervises the node's services from a declarative table, reaping
//! every process and never exiting. The same binary runs off PID 1 as a child subreaper (e.g. in
//! a fresh PID namespace) so supervision and shutdown can be tested on a host.

pub mod boot;
pub mod cmdline;
pub mod control;
pub mod logbuf;
pub mod modules;
pub mod net;
pub mod options;
pub mod output;
pub mod power;
pub mod run;
pub mod spawn;
pub mod supervisor;
pub mod table;
