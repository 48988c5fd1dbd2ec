//! System tests: a real namenode, real datanodes and a real client in one process, talking
//! QUIC with mutual TLS on loopback, storing into real RocksDB and real block files.

mod support;

mod coherence;
mod crash;
mod data_path;
mod delegation;
mod garbage;
mod group;
mod healing;
mod history;
mod identity;
mod mount;
mod namespace;
mod security;
mod topology;
mod trash;
