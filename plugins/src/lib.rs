//! Sources and decoders: where samples come from and how they become tensors.
//!
//! Data flow: a source ([`sources`]) finds an input, a decoder ([`decode`]) turns it into a batch
//! `[B, ..input_shape]` of `f32`, and the source hands it to the daemon with an acknowledgement
//! handle; a rejected input carries a [`decode::Rejection`] whose reason is a bounded metric label.
//! Every size an input declares is checked against [`limits::Limits`] before it is allocated.

#![forbid(unsafe_code)]

pub mod decode;
pub mod limits;
pub mod sources;
