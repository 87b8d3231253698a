//! The overlayer differential harness: case files, the kernel oracle, an
//! independent model of the OCI rules, proptest strategies, and the
//! `overlayer` command.

pub mod case;
pub mod check;
pub mod cli;
pub mod damage;
pub mod imagefmt;
pub mod kernel;
pub mod model;
pub mod prop;
pub mod replay;
pub mod strategy;
pub mod write;
