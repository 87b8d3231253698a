//! Guest result frames, the per-kernel row they add up to, and the table.
//!
//! `frames` parses the guest's lines and the results they carry,
//! `collector` adds them up into a `row`, and `table` formats the rows.

mod collector;
mod frames;
mod row;
mod table;

pub use collector::Collector;
pub use frames::{failing_stack, parse_frame, Frame};
pub use row::{console_excerpt, Row, RowContext, Status};
pub use table::{format_details, format_table};

#[cfg(test)]
mod tests;
