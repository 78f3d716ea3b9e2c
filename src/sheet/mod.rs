//! Workbooks, and nothing about clusters: reading the experiments workbook ([`read`]), writing
//! the results workbook ([`results`]), generating the template ([`template`]) and patching state
//! cells back into the user's workbook ([`writeback`]).

pub mod read;
pub mod results;
pub mod template;
pub mod writeback;
