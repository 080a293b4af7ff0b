//! tmp
pub mod sys;
