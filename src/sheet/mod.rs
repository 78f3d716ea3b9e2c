//! Workbooks, and nothing about clusters: reading the experiments workbook ([`read`]), writing
//! the results workbook ([`results`]), generating the template ([`template`]) and patching state
//! cells back into the user's workbook ([`writeback`]), and noticing when the user saved it
//! ([`watch`]).

pub mod read;
pub mod results;
pub mod template;
pub mod watch;
pub mod writeback;
