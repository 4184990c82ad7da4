//! hrnet: an inference engine for HRNet pose estimation.

pub mod config;
pub mod error;
pub mod graph;

pub use config::HrnetConfig;
pub use error::{Error, Result};
pub use graph::Graph;
