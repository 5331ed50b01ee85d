//! The API's objects as Rust types: what the server stores and answers, what the trainer
//! writes. Serializing one gives the JSON of OpenAI's spec, field for field.

pub mod chat;
pub mod checkpoint;
pub mod common;
pub mod completions;
pub mod eval;
pub mod event;
pub mod file;
pub mod grader;
pub mod hyperparameters;
pub mod job;
