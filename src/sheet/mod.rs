//! Workbooks, and nothing about clusters: reading the experiments workbook ([`read`]), writing
//! the results workbook ([`results`]) and generating the template ([`template`]).

pub mod read;
pub mod results;
pub mod template;
