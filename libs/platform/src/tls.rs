//! TLS and mutual TLS for servers and clients (issue 3).
