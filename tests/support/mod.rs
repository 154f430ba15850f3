//! Shared helpers of the end-to-end tests.
#![allow(dead_code, unreachable_pub)]

pub mod agent;
pub mod broker;
pub mod docker;
pub mod fleet;
pub mod monitoring;
