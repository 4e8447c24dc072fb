//! Palisade: a live-chat server shipped as a dedicated, locked-down appliance.
//!
//! See `ARCHITECTURE.md` for the module map and the invariants each module keeps.

// Handlers return a ready HTTP response as their error; boxing it would buy nothing.
#![allow(clippy::result_large_err)]

pub mod app;
pub mod assets;
pub mod audit;
pub mod chat;
pub mod cli;
pub mod core;
pub mod http;
pub mod hub;
pub mod logging;
pub mod operator;
pub mod policy;
pub mod sandbox;
pub mod secret;
pub mod storage;
pub mod tls;
pub mod visitor;
