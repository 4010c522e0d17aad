//! The merchant and admin HTTP/JSON API: wire framing (`wire`), request and response bodies
//! (`json`), and routes (`api`).
//!
//! Never: names the runtime or the storage; it calls the gateway's operations and maps their
//! outcomes to status codes and error objects.

pub mod api;
pub mod json;
pub mod wire;
