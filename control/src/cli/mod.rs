//! The `kokoa-control` operator command line. So far: the REST API client and table output the
//! commands are built on.

pub mod client;
pub mod table;
